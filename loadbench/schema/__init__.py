"""The documents loadbench writes and reads: typed, versioned, exported as JSON Schema."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

from loadbench.schema.result import problems


def iter_files(root: str) -> Iterator[str]:
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith(".tmp-"):
                yield os.path.join(folder, name)


def read_many(root: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """(valid result documents, [(path, why skipped)]) for every *.json under root."""
    docs, skipped = [], []
    for path in sorted(iter_files(root)):
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            skipped.append((path, f"unreadable: {type(e).__name__}: {e}"))
            continue
        if isinstance(doc, dict) and str(doc.get("schema", "")).startswith("loadbench.manifest"):
            continue
        bad = problems(doc)
        if bad:
            skipped.append((path, "; ".join(bad)))
            continue
        doc["_path"] = path
        docs.append(doc)
    return docs, skipped
