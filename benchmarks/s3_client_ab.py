#!/usr/bin/env python3
"""GET throughput of one object by three clients, alternated: is the GET ceiling the server's?

loadbench's GET ceiling and its reference read with `s3direct` (presigned GETs, the body read
straight into the buffer); before, with botocore's body (urllib3 copies it, holding the GIL).
tensorizer streams with `curl` processes, which no Python lock limits. This times all three on
the same object and ranges, round after round, so that a ceiling below what a loader reaches
can be told apart from a slow client:

    python benchmarks/s3_client_ab.py s3://bucket/key --streams 1,8,16,32 --range-mb 64 \\
        --seconds 2 --rounds 2 --out ab.json

The endpoint and credentials come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...),
as for loadbench. Prints a table and writes every try as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loadbench.storage import objectstore, s3direct  # noqa: E402
from loadbench.storage.s3read import RangeWalk  # noqa: E402

MiB = 1 << 20


def curl_try(url: str, size: int, streams: int, range_bytes: int, seconds: float) -> dict[str, Any]:
    """`streams` threads, each running one `curl` per range (to /dev/null) until the time is up:
    the ranges the ceiling's own tries read (RangeWalk)."""
    walk = RangeWalk(size, range_bytes, seconds)
    failed = []

    def worker() -> None:
        for off, n in walk.ranges():
            proc = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
                                   "-r", f"{off}-{off + n - 1}", url], capture_output=True, text=True)
            got = int(proc.stdout or 0) if not proc.returncode else 0
            if proc.returncode or got != n:  # a server that ignored the range would inflate the rate
                failed.append(proc.returncode or got)
            walk.done(min(got, n))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"gbps": walk.bytes / elapsed / 1e9, "bytes": walk.bytes, "seconds": elapsed,
            "requests": walk.requests, "failed": len(failed), "streams": streams,
            "range_bytes": range_bytes, "client": "curl (a process per range)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("uri", help="s3://bucket/key of one object")
    ap.add_argument("--streams", default="1,8,16,32", help="requests in flight, a comma list")
    ap.add_argument("--range-mb", type=int, default=64, help="MiB per ranged GET")
    ap.add_argument("--seconds", type=float, default=2.0, help="per try (each client, each stream count)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", help="every try, as JSON")
    args = ap.parse_args()
    u = objectstore.parse_uri(args.uri)
    streams = [int(x) for x in args.streams.split(",")]
    size = objectstore.object_info(u).bytes
    tries: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for name in (s3direct.NAME, s3direct.FALLBACK, "curl"):
            c = objectstore.client(concurrency=max(streams))
            if name == "curl":
                if not shutil.which("curl"):
                    continue
                url = c.generate_presigned_url("get_object", Params={"Bucket": u.bucket, "Key": u.prefix},
                                               ExpiresIn=3600)
                for n in streams:
                    tries.append(dict(curl_try(url, size, n, args.range_mb * MiB, args.seconds / 2), round=r))
                continue
            if name == s3direct.FALLBACK:
                s3direct.for_client(c).enabled = False
            got = objectstore.get_ceiling(objectstore.S3Uri(u.bucket), u.prefix, streams=streams,
                                          range_bytes=args.range_mb * MiB, seconds=args.seconds, s3=c)
            for t in got["tries"].values():
                tries.append(dict(t, round=r))
    print(f"{'client':36} {'streams':>7} {'round':>5} {'GB/s':>6}")
    for t in tries:
        print(f"{t['client']:36} {t['streams']:>7} {t['round']:>5} {t['gbps']:6.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"uri": args.uri, "object_bytes": size, "endpoint": objectstore.redact(
                objectstore.client().meta.endpoint_url), "tries": tries}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
