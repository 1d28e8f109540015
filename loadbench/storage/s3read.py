"""Reading objects in place: `read_ranges` and `read_object` (N parallel ranged GETs into
caller-provided buffers), `get_ceiling` (GET throughput for 1, 8 and 32 parallel ranged requests,
best and spread) and the ETag helpers `local_etag` and `etag_matches`. Both the reads and the
ceiling's tries go through s3direct first (presigned GETs, the body read straight into the
buffer), and through botocore for what it leaves.
Part of loadbench.storage.objectstore.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loadbench.errors import CheckpointError, ConfigError
from loadbench.storage import s3direct
from loadbench.storage.ceilings import run_workers
from loadbench.storage.s3client import _errors, _rate, client, list_objects, object_info
from loadbench.storage.s3types import (
    DEFAULT_RANGE_BYTES,
    PART_BYTES_METADATA,
    READ_CHUNK,
    Buffer,
    MiB,
    ObjectInfo,
    ObjectMismatch,
    Progress,
    S3Uri,
)
from loadbench.storage.s3uri import _as_uri, redact

# --------------------------------------------------------------------------- ETags

def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def local_etag(path: str, part_bytes: int | None = None, parts: int = 0) -> str:
    """The ETag S3 gives a file uploaded whole (MD5) or in `parts` parts of `part_bytes`
    (the MD5 of the parts' MD5s, '-N'); the parts are hashed in parallel."""
    import hashlib
    size = os.path.getsize(path)
    if not parts:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(8 * MiB), b""):
                digest.update(block)
        return digest.hexdigest()
    if not part_bytes:
        raise ValueError("local_etag: a multipart ETag needs the part size")

    def part_md5(offset: int) -> bytes:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            f.seek(offset)
            left = min(part_bytes, size - offset)
            while left > 0:
                block = f.read(min(8 * MiB, left))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
        return digest.digest()

    with ThreadPoolExecutor(max_workers=min(4, max(1, parts))) as pool:
        digests = list(pool.map(part_md5, range(0, size, part_bytes)))
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def etag_matches(path: str, info: ObjectInfo, bucket: str = "", s3: Any = None) -> bool | None:
    """Whether the local file's MD5-based ETag equals the object's; None when the ETag is not
    MD5-based (SSE-KMS, some servers) or the part size is unknown: a multipart object's part
    size comes from the metadata upload_folder writes (a HEAD, given `bucket` and `s3`)."""
    etag = info.etag.strip('"')
    if not re.fullmatch(r"[0-9a-f]{32}(-[0-9]+)?", etag):
        return None
    if "-" not in etag:
        return local_etag(path) == etag
    parts = int(etag.split("-")[1])
    part = None
    if s3 is not None and bucket:
        with contextlib.suppress(Exception):
            meta = s3.head_object(Bucket=bucket, Key=info.key).get("Metadata", {})
            part = int(meta.get(PART_BYTES_METADATA, 0)) or None
    if part is None or _ceil_div(info.bytes, part) != parts:
        return None  # several part sizes give the same count: guessing could call good bytes bad
    return local_etag(path, part, parts) == etag


# --------------------------------------------------------------------------- ranged reads

def _get_into(c: Any, bucket: str, key: str, offset: int, buf: memoryview, etag: str | None,
              attempts: int = 3) -> int:
    """One ranged GET of len(buf) bytes at `offset`, read into `buf`: straight from the socket
    (s3direct) where it can, else (or for what it left) through botocore. botocore retries a
    request only until its body starts; a body that breaks mid-stream (a reset, a read timeout)
    is re-requested from where it stopped, `attempts` times in all."""
    n = len(buf)
    if n == 0:
        return 0
    got = s3direct.for_client(c).get(bucket, key, offset, n, buf, etag)
    for attempt in range(attempts if got < n else 0):
        args: dict[str, Any] = {"Bucket": bucket, "Key": key,
                                "Range": f"bytes={offset + got}-{offset + n - 1}"}
        if etag:
            args["IfMatch"] = etag
        try:
            with _errors(c, bucket, key):
                body = c.get_object(**args)["Body"]
                try:
                    while got < n:
                        k = body.readinto(buf[got:got + READ_CHUNK])
                        if not k:
                            break
                        got += k
                finally:
                    body.close()
            break
        except Exception as e:
            if not _broken_body(e) or attempt == attempts - 1:
                raise
    if got != n:
        raise ObjectMismatch(f"s3://{bucket}/{key}: a ranged GET at offset {offset} returned {got} of {n} "
                             "bytes: the object is shorter than expected (truncated or replaced); save again")
    return got


def _broken_body(e: BaseException) -> bool:
    """A response body cut off in transfer (worth re-requesting), not an answer of the server."""
    names = {type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None}
    return bool(names & {"ProtocolError", "ReadTimeoutError", "IncompleteRead", "IncompleteReadError",
                         "ResponseStreamingError", "ReadTimeout", "ConnectionResetError",
                         "ConnectionError"})


def read_ranges(obj: S3Uri | str, ranges: Sequence[tuple[int, int]], into: Sequence[Buffer], *,
                concurrency: int = 8, etag: str | None = None, s3: Any = None,
                pool: ThreadPoolExecutor | None = None) -> int:
    """Read `ranges` [(offset, length), ...] of one object (`obj` is the object's own URI, e.g.
    uri.child('tensorizer/model.tensors')) into `into[i]` (writable, at least `length` bytes:
    bytearray, memoryview, a pinned tensor's numpy view), `concurrency` GETs in flight.

    `etag` pins every GET to that version of the object (a change fails as ObjectMismatch).
    Pass a long-lived `pool` to skip creating threads per call. Returns the bytes read."""
    u = _as_uri(obj)
    if len(ranges) != len(into):
        raise ValueError(f"read_ranges: {len(ranges)} ranges but {len(into)} buffers")
    views = []
    for (offset, length), buf in zip(ranges, into):
        view = memoryview(buf).cast("B")
        if offset < 0 or length < 0 or len(view) < length:
            raise ValueError(f"read_ranges: range ({offset}, {length}) does not fit a "
                             f"{len(view)}-byte buffer")
        if view.readonly:
            raise ValueError("read_ranges: a buffer is read-only")
        views.append((offset, view[:length]))
    c = s3 or client(concurrency=concurrency)
    if len(views) == 1 or concurrency == 1:
        return sum(_get_into(c, u.bucket, u.prefix, off, v, etag) for off, v in views)
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=min(concurrency, len(views)),
                                      thread_name_prefix="loadbench-s3")
    try:
        return sum(pool.map(lambda ov: _get_into(c, u.bucket, u.prefix, ov[0], ov[1], etag), views))
    finally:
        if own:
            pool.shutdown(wait=True)


def split_ranges(nbytes: int, range_bytes: int, offset: int = 0) -> list[tuple[int, int]]:
    """[(offset, length), ...] covering nbytes from `offset` in pieces of at most range_bytes."""
    if range_bytes <= 0:
        raise ValueError("range_bytes must be positive")
    return [(offset + o, min(range_bytes, nbytes - o)) for o in range(0, nbytes, range_bytes)]


def read_object(obj: S3Uri | str, into: Buffer, *, offset: int = 0,
                range_bytes: int = DEFAULT_RANGE_BYTES, concurrency: int = 8, etag: str | None = None,
                s3: Any = None, pool: ThreadPoolExecutor | None = None) -> int:
    """Fill `into` with the object's bytes from `offset` (len(into) of them), as parallel
    ranged GETs of `range_bytes`. Returns the bytes read."""
    view = memoryview(into).cast("B")
    ranges = split_ranges(len(view), range_bytes, offset)
    bufs = [view[o - offset:o - offset + n] for o, n in ranges]
    return read_ranges(obj, ranges, bufs, concurrency=concurrency, etag=etag, s3=s3, pool=pool)


# --------------------------------------------------------------------------- the GET ceiling

class RangeWalk:
    """What a throughput try reads: ranges of one object handed to its threads in turn, walking
    the object and wrapping around at its end, until the time is up (each thread gets at least
    one); the bytes and requests the threads report, summed."""

    def __init__(self, size: int, range_bytes: int, seconds: float) -> None:
        self.size, self.range_bytes = size, range_bytes
        self.deadline = time.perf_counter() + seconds
        self.lock = threading.Lock()
        self.next = self.bytes = self.requests = 0

    def ranges(self) -> Iterator[tuple[int, int]]:
        """(offset, length) for one thread, until the deadline."""
        first = True
        while first or time.perf_counter() < self.deadline:
            first = False
            with self.lock:
                off = self.next
                self.next = 0 if off + self.range_bytes >= self.size else off + self.range_bytes
            yield off, min(self.range_bytes, self.size - off)

    def done(self, nbytes: int) -> None:
        with self.lock:
            self.bytes += nbytes
            self.requests += 1


def _timed_gets(c: Any, bucket: str, key: str, size: int, streams: int, range_bytes: int,
                seconds: float) -> tuple[int, float, int]:
    """`streams` threads each issuing ranged GETs of range_bytes (a RangeWalk) until the time is
    up. (bytes, seconds, requests)."""
    direct = s3direct.for_client(c)
    walk = RangeWalk(size, range_bytes, seconds)
    errors: list[BaseException] = []

    def worker() -> None:
        scratch = memoryview(bytearray(min(range_bytes, READ_CHUNK * 8, max(size, 1))))
        try:
            for off, n in walk.ranges():
                got = direct.get(bucket, key, off, n, scratch, wrap=True)
                if got < n:  # what the direct reader left (or all of it): botocore's body
                    args = {"Bucket": bucket, "Key": key, "Range": f"bytes={off + got}-{off + n - 1}"}
                    with _errors(c, bucket, key):
                        body = c.get_object(**args)["Body"]
                        try:
                            while True:
                                k = body.readinto(scratch)
                                if not k:
                                    break
                                got += k
                        finally:
                            body.close()
                walk.done(got)
        except BaseException as e:  # reported to the caller
            errors.append(e)

    elapsed = run_workers(worker, streams, errors, "loadbench-get")
    return walk.bytes, elapsed, walk.requests


def largest_object(uri: S3Uri | str, s3: Any = None) -> ObjectInfo:
    """The largest object under the prefix (what a GET ceiling reads by default)."""
    u = _as_uri(uri)
    listing = list_objects(u, s3)
    if not listing:
        raise CheckpointError(f"{u}: no objects under prefix {u.prefix!r} in bucket {u.bucket!r}: run "
                              "save_models.py with this MODEL_URI")
    return max(listing.values(), key=lambda i: i.bytes)


def get_ceiling(uri: S3Uri | str, key: str | None = None, *, streams: Sequence[int] = (1, 8, 32),
                range_bytes: int | Sequence[int] = (16 * MiB, 64 * MiB), seconds: float = 4.0,
                s3: Any = None, progress: Progress = None) -> dict[str, Any]:
    """GET throughput from the endpoint: for each N in `streams` and each range size, N threads
    issue ranged GETs of one object (`key` under the prefix, the largest object by default)
    for about seconds/2; the best is kept, every try and the spread recorded, in the shape of
    the other ceilings (loadbench.storage.ceilings)."""
    u = _as_uri(uri)
    sizes = [range_bytes] if isinstance(range_bytes, int) else list(range_bytes)
    if not streams or not sizes or min(streams) < 1 or min(sizes) < 1:
        raise ConfigError("the GET ceiling needs at least one stream count and one range size, all >= 1")
    c = s3 or client(concurrency=max(streams))
    info = object_info(u.child(key), c) if key else largest_object(u, c)
    if info.bytes == 0:
        raise CheckpointError(f"s3://{u.bucket}/{info.key} is empty: nothing to measure a GET ceiling with")
    say = progress or (lambda _msg: None)
    endpoint = redact(c.meta.endpoint_url)
    per_try = max(seconds / 2, 0.05)
    tries: dict[str, Any] = {}
    for n in streams:
        for size in sizes:
            name = f"{n}x{size // MiB}M" if size >= MiB else f"{n}x{size}B"
            say(f"ceilings: GET {name} from {endpoint} (<= {per_try:g} s)")
            before = s3direct.for_client(c).counters()
            nbytes, elapsed, requests = _timed_gets(c, u.bucket, info.key, info.bytes, n, size, per_try)
            after = s3direct.for_client(c).counters()  # which client read this try's GETs
            how = s3direct.label(after[0] - before[0], after[1] - before[1])
            tries[name] = {"gbps": _rate(nbytes, elapsed), "bytes": nbytes, "seconds": elapsed,
                           "requests": requests, "streams": n, "range_bytes": size, "client": how,
                           "method": f"{n} parallel ranged GETs of {size // MiB} MiB from {endpoint} ({how})"}
    rates = [t["gbps"] for t in tries.values() if t.get("gbps")]
    best = max((t for t in tries.values() if t.get("gbps")), key=lambda t: t["gbps"])
    spread = {"min_gbps": min(rates), "max_gbps": max(rates), "tries": len(rates)}
    return dict(best, tries=tries, spread=spread,
                object=f"s3://{u.bucket}/{info.key}", object_bytes=info.bytes, endpoint=endpoint)
