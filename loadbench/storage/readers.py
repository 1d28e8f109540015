"""One of N concurrent reader processes for the aggregate storage ceiling.

`python -m loadbench.storage.readers '{"paths": [...], "seconds": 2, "direct": true,
"threads": 16, "block": 8388608, "rotate": 0.5, "start_at": 1764251000.0}'` waits
until `start_at` (a Unix time, so N processes begin together), reads the files as
one process of a pod would, and prints one JSON line: bytes, start, end.
"""

from __future__ import annotations

import json
import sys
import time

from loadbench.storage.ceilings import timed_reads


def main(argv: list[str]) -> int:
    job = json.loads(argv[0])
    delay = job["start_at"] - time.time()
    if delay > 0:
        time.sleep(delay)
    start = time.time()
    nbytes, _ = timed_reads(job["paths"], job["seconds"], job["direct"], job["threads"], job["block"],
                            rotate=job.get("rotate", 0.0))
    print(json.dumps({"bytes": nbytes, "start": start, "end": time.time()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
