"""Write the JSON Schema files: `python -m loadbench.schema --export docs/schema`.

Without --export, prints the result schema. The committed files are checked
against this output by tests/unit/test_schema.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

try:
    from loadbench.schema import manifest, result
except ModuleNotFoundError as e:  # a Python without loadbench's dependencies: one line, no traceback
    raise SystemExit(f"python -m loadbench.schema: {e.name} is not installed for {sys.executable}; "
                     "use the project's venv: .venv/bin/python -m loadbench.schema (`make setup` makes it)"
                     ) from None

FILES: dict[str, Callable[[], dict[str, Any]]] = {
    "result.schema.json": result.json_schema,
    "manifest.schema.json": manifest.json_schema,
}


def render(make: Callable[[], dict[str, Any]]) -> str:
    return json.dumps(make(), indent=2, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadbench.schema", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", metavar="DIR", help="write result.schema.json and manifest.schema.json")
    args = ap.parse_args(argv)
    if not args.export:
        sys.stdout.write(render(result.json_schema))
        return 0
    os.makedirs(args.export, exist_ok=True)
    for name, make in FILES.items():
        path = os.path.join(args.export, name)
        with open(path, "w") as f:
            f.write(render(make))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
