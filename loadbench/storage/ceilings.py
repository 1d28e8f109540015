"""What this machine allows: the limits a load can be compared with.

Measured in the pod, on the checkpoint's own files, each bounded in time:
- storage read: the files read with O_DIRECT (bypassing the page cache) by
  several threads; where the filesystem refuses O_DIRECT, the files are
  evicted and read buffered, and the method says so;
- page-cache read: the same files, fully resident, read buffered;
- host-to-device: pinned and pageable host buffers copied to the device.

A cold load cannot beat min(storage, host-to-device); a warm one cannot beat
min(page cache, host-to-device).
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from loadbench.storage import cache

if TYPE_CHECKING:
    import torch

BLOCK = 8 << 20
THREADS = 16


def _timed_reads(paths: list[str], seconds: float, direct: bool) -> tuple[int, float]:
    """Read the files in BLOCK pieces from THREADS threads until done or out of time."""
    jobs = [(p, off) for p in paths for off in range(0, os.path.getsize(p), BLOCK)]
    lock = threading.Lock()
    total = [0]
    deadline = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def worker() -> None:
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        fds: dict[str, int] = {}
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if not jobs:
                        return
                    path, off = jobs.pop()
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
                n = os.preadv(fds[path], [buf], off)
                with lock:
                    total[0] += n
        except BaseException as e:  # reported to the caller
            errors.append(e)
        finally:
            for fd in fds.values():
                os.close(fd)
            buf.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return total[0], elapsed


def _result(nbytes: int, seconds: float, method: str) -> dict[str, Any]:
    return {"gbps": nbytes / seconds / 1e9 if seconds > 0 else None, "bytes": nbytes,
            "seconds": seconds, "method": method}


def storage_read(paths: list[str], seconds: float) -> dict[str, Any]:
    """The faster of O_DIRECT reads and buffered reads of evicted files.

    Either can win: O_DIRECT skips a copy, buffered reads get the kernel's
    readahead. A ceiling a loader beats is no ceiling, so both are tried
    and both are recorded.
    """
    tries = {}
    try:
        tries["direct"] = _result(*_timed_reads(paths, seconds / 2, direct=True),
                                  f"O_DIRECT, {THREADS} threads, {BLOCK >> 20} MiB blocks")
    except OSError as e:
        tries["direct"] = {"gbps": None, "method": f"O_DIRECT refused: {e}"}
    cache.evict(paths)
    tries["buffered"] = _result(*_timed_reads(paths, seconds / 2, direct=False),
                                f"evicted, then buffered reads, {THREADS} threads")
    cache.evict(paths)
    best = max((t for t in tries.values() if t.get("gbps")), key=lambda t: t["gbps"])
    return dict(best, tries=tries)


def page_cache_read(paths: list[str], seconds: float) -> dict[str, Any]:
    cache.warm(paths)
    nbytes, elapsed = _timed_reads(paths, seconds, direct=False)
    return _result(nbytes, elapsed, f"resident files, buffered, {THREADS} threads")


def host_to_device(device: torch.device, pinned: bool, seconds: float,
                   nbytes: int = 1 << 30) -> dict[str, Any]:
    import torch
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    src.fill_(1)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=pinned)  # warm-up
    torch.cuda.synchronize(device)
    copied, start = 0, time.perf_counter()
    while True:
        dst.copy_(src, non_blocking=pinned)
        torch.cuda.synchronize(device)
        copied += nbytes
        if time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    del src, dst
    return _result(copied, elapsed, f"{'pinned' if pinned else 'pageable'} host buffer, "
                                    f"{nbytes >> 20} MiB copies")


def measure(paths: list[str], device: torch.device, seconds: float,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """All ceilings, each bounded by `seconds`; missing ones say why."""
    out: dict[str, Any] = {}
    progress(f"ceilings: storage read of {len(paths)} file(s) (<= {seconds:g} s)")
    out["storage_read"] = storage_read(paths, seconds)
    progress(f"ceilings: page-cache read (<= {seconds:g} s)")
    out["page_cache_read"] = page_cache_read(paths, seconds)
    if device.type == "cuda":
        progress("ceilings: pinned and pageable host-to-device copies")
        out["h2d_pinned"] = host_to_device(device, True, seconds)
        out["h2d_pageable"] = host_to_device(device, False, seconds)
    else:
        reason = {"gbps": None, "method": f"not measured: device is {device.type}"}
        out["h2d_pinned"] = dict(reason)
        out["h2d_pageable"] = dict(reason)
    return out


def limits_for(resident: float) -> tuple[str, str]:
    """The two ceilings that bound a load starting at this residency: the read
    (storage when mostly evicted, page cache when mostly resident), then the
    pinned host-to-device copy."""
    return ("storage_read" if resident < 0.5 else "page_cache_read"), "h2d_pinned"


def bound(ceilings: dict[str, Any] | None, resident: float) -> tuple[str | None, float | None]:
    """(name, GB/s) of the lower of the two limits_for(resident) that were measured."""
    candidates = [(n, ((ceilings or {}).get(n) or {}).get("gbps")) for n in limits_for(resident)]
    candidates = [c for c in candidates if c[1]]
    if not candidates:
        return None, None
    return min(candidates, key=lambda c: c[1])
