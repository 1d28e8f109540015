"""Writing files so that readers never see half of one, and groups can read them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any

# Documents and checkpoints are read by collectors running as another user of
# the pod's group (the PVC helper pod): group-readable, never world-writable.
FILE_MODE = 0o640


def safe_component(text: str, fallback: str) -> str:
    """One path component made of letters, digits, '.', '_' and '-' (runs of others become '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text) or fallback


def write_json_atomic(path: str, data: Any, exclusive: bool = False) -> None:
    """Write JSON through a temporary file and a rename (or a hard link when
    `exclusive`, which refuses to replace an existing file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        if exclusive:
            os.link(tmp, path)  # FileExistsError if a file of that name exists
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
