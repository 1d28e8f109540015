"""What the collection helper pod runs: print every result document on the PVC.

    python -m loadbench.cluster.dump RESULTS_DIR

One line per file, `LOADBENCH_FILE {"path": ..., "doc": ...}` (or
`{"path": ..., "error": ...}` for a file it would not or could not read), so
the documents travel through the pod's log: no exec, no tar, no extra RBAC.
The volume is written by pods, so it is read as untrusted: symbolic links are
reported, never followed; only regular files are opened; a file that cannot be
parsed is reported and the dump goes on. The collector checks every path and
document again on its side.

Exit 0 when the folder was read (whatever its files held); 2 (bad input) when
the arguments are wrong or RESULTS_DIR is not a folder: no retry of the
helper pod would find it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from loadbench.errors import EXIT_BAD_INPUT, EXIT_OK
from loadbench.schema import display, read_json, walk

PREFIX = "LOADBENCH_FILE "


def record_line(rel: str, doc: Any = None, error: str | None = None) -> str:
    record: dict[str, Any] = {"path": rel}
    if error is None:
        record["doc"] = doc
    else:
        record["error"] = error
    try:
        return PREFIX + json.dumps(record, separators=(",", ":"))
    except (ValueError, RecursionError) as e:  # parsed, yet cannot be printed back
        return PREFIX + json.dumps({"path": rel, "error": f"cannot be printed: {type(e).__name__}"})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m loadbench.cluster.dump RESULTS_DIR", file=sys.stderr)
        return EXIT_BAD_INPUT
    root = args[0]
    if not os.path.isdir(root):
        print(f"dump: {root} does not exist (no results yet?)", file=sys.stderr)
        return EXIT_BAD_INPUT
    count = skipped = 0
    for path, why in walk(root):
        rel = display(os.path.relpath(path, root))
        if why is None:
            doc, why = read_json(path)
        print(record_line(rel, doc if why is None else None, why), flush=False)
        count += 1
        skipped += why is not None
    sys.stdout.flush()
    print(f"dump: {count} file(s) under {root}, {skipped} not readable", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
