"""Checking untrusted JSON against a model: per-field reasons, never an exception.

Shared by the result document and the manifest: what no model should see
(too deep, NaN, non-string keys) is refused first, then pydantic's errors are
turned into one line each ("trials.0.total_s: Input should be a finite
number"), whatever the keys hold.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ValidationError

MAX_DEPTH = 64            # deeper JSON is refused before any model sees it
MAX_PROBLEMS = 20         # reasons listed per document; the rest are counted


def _part(key: Any) -> str:
    """A path element fit for one line of output, however hostile the key."""
    shown = str(key)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    if not shown or "." in shown or not shown.isprintable() or not shown.isascii():
        shown = repr(shown).encode("ascii", "backslashreplace").decode()
    return shown


def _where(path: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(_part(p) for p in path) or "document"


def scan(value: Any, max_depth: int = MAX_DEPTH) -> list[str]:
    """What no model should ever see: nesting deeper than max_depth, NaN or
    Infinity anywhere (also in free-form objects), keys that are not strings.
    Iterative, so it cannot overflow the stack itself."""
    out: list[str] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack and len(out) < MAX_PROBLEMS:
        item, path = stack.pop()
        if len(path) > max_depth:
            out.append(f"{_where(path[:max_depth])}: nested deeper than {max_depth} levels")
            continue
        if isinstance(item, float) and not math.isfinite(item):
            out.append(f"{_where(path)}: Input should be a finite number")
        elif isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    out.append(f"{_where(path + (k,))}: keys should be strings")
                stack.append((v, path + (k,)))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, path + (i,)) for i, v in enumerate(item))
    return sorted(set(out))


def format_errors(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ["schema" if p == "schema_" else p for p in e["loc"]]
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{_where(loc)}: {msg}")
    return out


def _cap(reasons: list[str]) -> list[str]:
    if len(reasons) > MAX_PROBLEMS:
        return reasons[:MAX_PROBLEMS] + [f"... and {len(reasons) - MAX_PROBLEMS} more"]
    return reasons


def check(model: type[BaseModel], doc: Any) -> list[str]:
    """Per-field reasons why doc is not a valid `model`; [] when it is. Never raises."""
    try:
        bad = scan(doc)
        if bad:
            return _cap(bad)
        model.model_validate(doc)
        return []
    except ValidationError as e:
        return _cap(format_errors(e))
    except Exception as e:  # RecursionError, MemoryError...: the document is the problem
        return [f"document: could not be checked ({type(e).__name__})"]
