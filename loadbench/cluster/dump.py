"""What the collection helper pod runs: print every result document on the PVC.

One line per file, `LOADBENCH_FILE {"path": ..., "doc": ...}`, so the
documents travel through the pod's log: no exec, no tar, no extra RBAC.
"""

from __future__ import annotations

import json
import os
import sys

from loadbench.schema import iter_files

PREFIX = "LOADBENCH_FILE "


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadbench.cluster.dump RESULTS_DIR", file=sys.stderr)
        return 2
    root = args[0]
    if not os.path.isdir(root):
        print(f"dump: {root} does not exist (no results yet?)", file=sys.stderr)
        return 3
    count = 0
    for path in iter_files(root):
        rel = os.path.relpath(path, root)
        try:
            with open(path) as f:
                record = {"path": rel, "doc": json.load(f)}
        except (OSError, ValueError) as e:
            record = {"path": rel, "error": f"{type(e).__name__}: {e}"}
        print(PREFIX + json.dumps(record, separators=(",", ":")))
        count += 1
    print(f"dump: {count} file(s) under {root}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
