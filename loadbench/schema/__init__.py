"""The documents loadbench writes and reads: typed, versioned, exported as JSON Schema.

- `loadbench.schema.result`: the result document (`problems(doc)`, `SCHEMA`, `READABLE`);
- `loadbench.schema.manifest`: manifest.json (`problems(manifest)`, `MANIFEST_SCHEMA`);
- here: reading a folder of documents that may hold anything (`read_many`).

    python -m loadbench.schema --export docs/schema    # the JSON Schema files

Every file is untrusted: a symbolic link is never followed, only regular
files are opened (a FIFO would block), sizes are bounded, and any file that
cannot be read, parsed or validated is skipped with the reason, never raised.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from typing import Any, Iterator

try:
    from loadbench.schema.result import problems
except ModuleNotFoundError as _missing:
    if sys.argv[:1] == ["-m"]:  # `python -m loadbench.schema` from a Python without the deps
        raise SystemExit(f"python -m loadbench.schema: {_missing.name} is not installed for "
                         f"{sys.executable}; use the project's venv: .venv/bin/python -m "
                         f"loadbench.schema (`make setup` makes it)") from None
    raise

MAX_BYTES = 64 << 20   # a result document is kilobytes; anything this large is not one


def display(path: str) -> str:
    """A path fit for one line of output: undecodable bytes and control characters escaped."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _odd_name(path: str, root: str) -> bool:
    rel = os.path.relpath(path, root)
    return display(rel) != rel


def walk(root: str) -> Iterator[tuple[str, str | None]]:
    """(path, None) for every *.json regular-file candidate under root, in sorted
    order, and (path, why) for what is there but will not be read."""
    errors: list[OSError] = []
    for folder, dirs, files in os.walk(root, onerror=errors.append):
        while errors:
            e = errors.pop()
            yield str(e.filename or folder), f"folder not readable: {e.strerror or e}"
        kept = []
        for name in sorted(dirs):
            path = os.path.join(folder, name)
            if os.path.islink(path):
                yield path, "symbolic link to a folder, not followed"
            else:
                kept.append(name)
        dirs[:] = kept
        for name in sorted(files):
            if not name.endswith(".json") or name.startswith(".tmp-"):
                continue
            path = os.path.join(folder, name)
            if os.path.islink(path):
                yield path, "symbolic link, not followed"
            elif _odd_name(path, root):
                yield path, "name is not valid UTF-8 or has control characters"
            else:
                yield path, None
    while errors:
        e = errors.pop()
        yield str(e.filename or root), f"folder not readable: {e.strerror or e}"


def iter_files(root: str) -> Iterator[str]:
    """Every *.json file under root that read_many would open (no links, no temporaries)."""
    for path, why in walk(root):
        if why is None:
            yield path


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_json(data: str | bytes) -> tuple[Any, str | None]:
    """(value, None) or (None, why) for untrusted JSON text; bytes must be UTF-8. Never raises
    for what the input holds: bad UTF-8, bad JSON and nesting too deep are each a reason."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"not valid UTF-8 (byte {e.start})"
    try:
        return json.loads(data), None
    except RecursionError:
        return None, "not valid JSON: nested too deeply to parse"
    except ValueError as e:
        return None, f"not valid JSON: {_short(e).split(': ', 1)[-1]}"


def load_fd(fd: int, max_bytes: int = MAX_BYTES) -> tuple[Any, str | None]:
    """(value, None) or (None, why) for the JSON in an open file; never raises."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > max_bytes:
            return None, f"{st.st_size} bytes, larger than {max_bytes >> 20} MiB: not a result document"
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            return None, f"larger than {max_bytes >> 20} MiB: not a result document"
        return parse_json(data)
    except Exception as e:  # MemoryError, OSError while reading...: this file only
        return None, f"unreadable: {_short(e)}"


OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def read_json(path: str, max_bytes: int = MAX_BYTES, dir_fd: int | None = None
              ) -> tuple[Any, str | None]:
    """(value, None) or (None, why): never follows a link, never blocks, never raises.
    With dir_fd, path is relative to that open folder."""
    try:
        fd = os.open(path, OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symbolic link, not followed"
        return None, f"unreadable: {e.strerror or _short(e)}"
    try:
        return load_fd(fd, max_bytes)
    finally:
        os.close(fd)


def other_kind(doc: Any) -> str | None:
    """The kind of a loadbench file that is not a result document (manifest.json, a node's
    ceilings file), which readers leave out silently; None for anything else."""
    if not isinstance(doc, dict):
        return None
    kind = doc.get("schema")
    if isinstance(kind, str) and kind.startswith("loadbench.") and not kind.startswith("loadbench.result"):
        return kind.split("/")[0]
    if kind is None and {"node", "device", "ceilings", "measured_by"} <= set(doc):
        return "loadbench.ceilings"  # RES_PATH/<run_id>/ceilings/<node>.json before it named its schema
    return None


def normalize(doc: dict[str, Any]) -> dict[str, Any]:
    """What every reader sees whatever the version: a v1 `tuning` is also `options`."""
    if doc.get("schema") == "loadbench.result/1":
        doc["options"] = dict(doc.get("tuning") or {})
    return doc


def read_many(root: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(valid result documents, [(path, why skipped)]) for every *.json under root.

    Documents are the dicts as read, normalized (`options` for v1), with `_path`.
    Manifests and node ceilings files are left out silently. Never raises on what
    the files hold."""
    docs: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for path, why in walk(root):
        if why is None:
            doc, why = read_json(path)
        if why is None and other_kind(doc):
            continue
        if why is None:
            bad = problems(doc)
            why = "; ".join(bad) if bad else None
        if why is not None:
            skipped.append((display(path), why))
            continue
        doc = normalize(doc)
        doc["_path"] = path
        docs.append(doc)
    return docs, skipped
