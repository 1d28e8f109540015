"""Building and writing one result document (producer side).

One JSON document per library variant per pod, self-describing like pyperf's
result files: schema version, every setting as resolved, versions, machine,
and raw per-trial samples. Statistics are computed from the trials when
reporting, never stored.
"""

from __future__ import annotations

import json
import os
import traceback
import uuid
from datetime import datetime, timezone
from typing import Any

from loadbench import machine
from loadbench.config import Settings
from loadbench.errors import one_line
from loadbench.schema.result import LOG_PREFIX, MODELS, SCHEMA, check
from loadbench.storage.files import write_json_atomic


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_document(library: str, label: str, options: dict[str, Any], settings: Settings | None,
                 recorded: dict[str, Any] | None = None, identity: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    record = settings.record() if settings else dict(recorded or {})
    return {
        "schema": SCHEMA,
        "status": "ok",
        "error": None,
        "library": library,
        "label": label,
        "options": options,
        "io_mode": None,
        "run_id": settings.run_id if settings else record.get("RUN_ID"),
        "identity": machine.identity(settings.identity if settings else (identity or record)),
        "settings": record,
        "model": None,
        "device": None,
        "versions": {},
        "machine": machine.machine(),
        "ceilings": None,
        "pod": None,
        "warnings": [],
        "trials": [],
        "started_at": now(),
        "finished_at": None,
    }


def where(exc: BaseException) -> str:
    """file:line in function of the innermost frame that raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def error_info(exc: BaseException, where: str) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": one_line(exc).split(": ", 1)[-1], "where": where}


def fail(doc: dict[str, Any], exc: BaseException, where: str) -> dict[str, Any]:
    doc["status"] = "error"
    doc["error"] = error_info(exc, where)
    return doc


def file_name(doc: dict[str, Any]) -> str:
    """Unique per pod and attempt: the pod's uid (or host and pid), time and 64 random bits.

    The file is also created exclusively, so even two pods of one hostname,
    pid and index in one second can never overwrite each other."""
    ident = doc["identity"]
    who = ident.get("pod") or ident.get("hostname") or "local"
    index = ident.get("completion_index")
    stamp = doc["started_at"].replace(":", "").replace("-", "").replace(".", "")[:15]
    parts = [who] + ([f"i{index}"] if index is not None else []) + [
        stamp, f"p{ident.get('pid')}", uuid.uuid4().hex[:16]]
    name = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in name) + ".json"


class InvalidDocument(ValueError):
    """The producer built a document its own schema refuses: a bug in loadbench."""


def validate(doc: dict[str, Any]) -> dict[str, Any]:
    """The document, checked against the model of the version it claims, before it leaves
    the pod: a producer bug is caught where it is made, not by a reader days later."""
    reasons = check(MODELS[doc["schema"]], doc)
    if reasons:
        raise InvalidDocument(f"the {doc.get('label')!r} document fails its own schema "
                              f"{doc['schema']}: " + "; ".join(reasons))
    return doc


def write(doc: dict[str, Any], res_path: str) -> str:
    """RES_PATH/<run_id>/<label>/<unique>.json, created exclusively through a link."""
    validate(doc)
    folder = os.path.join(res_path, doc.get("run_id") or "unknown", doc["label"])
    while True:
        path = os.path.join(folder, file_name(doc))
        try:
            write_json_atomic(path, doc, exclusive=True)
            return path
        except FileExistsError:
            continue


def log_line(doc: dict[str, Any]) -> str:
    validate(doc)
    return LOG_PREFIX + json.dumps(doc, separators=(",", ":"), allow_nan=False)
