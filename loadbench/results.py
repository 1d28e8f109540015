"""The result document: build, validate, write atomically, read many.

One JSON document per library per pod, self-describing like pyperf's result
files: schema version, every setting as resolved, versions, machine, and raw
per-trial samples. Statistics are computed from the trials when reporting.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

from loadbench.checkpoint import write_json_atomic

SCHEMA = "loadbench.result/1"
LOG_PREFIX = "LOADBENCH_RESULT "
STATUSES = ("ok", "error")

TRIAL_KEYS = ("status", "cache_mode", "resident_before", "skeleton_s", "weights_s", "total_s",
              "gbps", "ceiling_fraction", "peak_rss_bytes", "peak_device_bytes",
              "tensors_verified", "mismatches", "started_at", "finished_at")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def identity(settings: dict[str, Any]) -> dict[str, Any]:
    """Who produced the document: the pod, its Job and node, or this host."""
    return {
        "job": settings.get("JOB_NAME") or None,
        "completion_index": settings.get("JOB_COMPLETION_INDEX"),
        "pod": settings.get("POD_NAME") or None,
        "pod_uid": settings.get("POD_UID") or None,
        "node": settings.get("NODE_NAME") or socket.gethostname(),
        "namespace": settings.get("POD_NAMESPACE") or None,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
    }


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": sys.version.split()[0],
    }


def new_document(library: str, label: str, tuning: dict[str, Any], settings: dict[str, Any]
                 ) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "status": "ok",
        "error": None,
        "library": library,
        "label": label,
        "tuning": tuning,
        "run_id": settings.get("RUN_ID"),
        "identity": identity(settings),
        "settings": settings,
        "model": None,
        "device": None,
        "versions": {},
        "machine": machine(),
        "ceilings": None,
        "warnings": [],
        "trials": [],
        "started_at": now(),
        "finished_at": None,
    }


def error_info(exc: BaseException, where: str) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc), "where": where}


def fail(doc: dict[str, Any], exc: BaseException, where: str) -> dict[str, Any]:
    doc["status"] = "error"
    doc["error"] = error_info(exc, where)
    return doc


def validate(doc: Any) -> list[str]:
    """Problems that make a document unusable for reporting; empty if fine."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    problems = []
    if doc.get("schema") != SCHEMA:
        return [f"schema is {doc.get('schema')!r}, this reader understands {SCHEMA!r}"]
    for key in ("status", "library", "run_id", "settings", "trials"):
        if key not in doc:
            problems.append(f"missing {key!r}")
    if doc.get("status") not in STATUSES:
        problems.append(f"status {doc.get('status')!r} is not one of {STATUSES}")
    if doc.get("status") == "error" and not isinstance(doc.get("error"), dict):
        problems.append("status is error but 'error' is missing")
    trials = doc.get("trials")
    if not isinstance(trials, list):
        problems.append("'trials' is not a list")
    else:
        for i, trial in enumerate(trials):
            if not isinstance(trial, dict):
                problems.append(f"trial {i} is not an object")
                continue
            missing = [k for k in TRIAL_KEYS if k not in trial]
            if missing:
                problems.append(f"trial {i} lacks {', '.join(missing)}")
    return problems


def file_name(doc: dict[str, Any]) -> str:
    """Unique per pod and attempt: pods never overwrite each other."""
    ident = doc["identity"]
    who = ident.get("pod") or ident.get("hostname") or "local"
    index = ident.get("completion_index")
    stamp = doc["started_at"].replace(":", "").replace("-", "").replace(".", "")[:15]
    parts = [who] + ([f"i{index}"] if index is not None else []) + [
        stamp, f"p{ident.get('pid')}", uuid.uuid4().hex[:6]]
    return "-".join(str(p) for p in parts) + ".json"


def write(doc: dict[str, Any], res_path: str) -> str:
    """RES_PATH/<run_id>/<label>/<unique>.json, written through a rename."""
    folder = os.path.join(res_path, doc.get("run_id") or "unknown", doc["label"])
    path = os.path.join(folder, file_name(doc))
    write_json_atomic(path, doc)
    return path


def log_line(doc: dict[str, Any]) -> str:
    return LOG_PREFIX + json.dumps(doc, separators=(",", ":"), sort_keys=False)


def iter_files(root: str) -> Iterator[str]:
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith(".tmp-"):
                yield os.path.join(folder, name)


def read_many(root: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(valid documents, [(path, why skipped)]) for every *.json under root."""
    docs, skipped = [], []
    for path in sorted(iter_files(root)):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            skipped.append((path, f"unreadable: {e}"))
            continue
        if isinstance(doc, dict) and doc.get("schema", "").startswith("loadbench.manifest"):
            continue
        problems = validate(doc)
        if problems:
            skipped.append((path, "; ".join(problems)))
            continue
        doc["_path"] = path
        docs.append(doc)
    return docs, skipped
