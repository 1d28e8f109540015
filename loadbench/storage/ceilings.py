"""What this machine allows: the limits a load can be compared with.

Measured in the pod, on the checkpoint's own files, each bounded in time:
- storage read: the files read with O_DIRECT (bypassing the page cache) and,
  evicted, with buffered reads, each with several thread counts and block
  sizes; the best is kept and the spread recorded (a loader that beats a
  4-second, one-shape sample proved it was no ceiling);
- page-cache read: the same files, fully resident, read buffered;
- host-to-device: pinned and pageable host buffers copied to the device.

A cold load cannot beat min(storage, host-to-device); a warm one cannot beat
min(page cache, host-to-device). A trial that does by more than 3% marks the
ceiling unreliable rather than showing it as a limit.

Ceilings are a property of the node, its device and the filesystem holding
the checkpoint, not of the pod or the run: with CEILINGS=reuse the first pod
measures them into RES_PATH/ceilings/<node>-<device>-<filesystem>.json under a
lock, and every later pod of any run reuses that file within CEILINGS_TTL and
says so.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from loadbench.storage import cache
from loadbench.storage.files import safe_component, write_json_atomic

if TYPE_CHECKING:
    import torch

BLOCK = 8 << 20
THREADS = 16
BEATEN_MARGIN = 0.03
# (threads, block) shapes tried for the storage read: narrow to wide, and deep (64 requests in
# flight: an O_DIRECT loader beat the 32-thread shape on an H100's virtio disk). Buffers stay
# under 1 GiB in all.
SHAPES = ((4, 1 << 20), (16, 8 << 20), (32, 32 << 20), (64, 8 << 20))


def _timed_reads(paths: list[str], seconds: float, direct: bool, threads: int = THREADS,
                 block: int = BLOCK) -> tuple[int, float]:
    """Read the files in `block` pieces from `threads` threads until done or out of time."""
    jobs = [(p, off) for p in paths for off in range(0, os.path.getsize(p), block)]
    jobs.reverse()  # pop() takes them in file order, as a sequential loader would
    lock = threading.Lock()
    total = [0]
    deadline = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def worker() -> None:
        buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
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
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return total[0], elapsed


def _result(nbytes: int, seconds: float, method: str) -> dict[str, Any]:
    return {"gbps": nbytes / seconds / 1e9 if seconds > 0 else None, "bytes": nbytes,
            "seconds": seconds, "method": method}


def storage_read(paths: list[str], seconds: float) -> dict[str, Any]:
    """The best of O_DIRECT and evicted-buffered reads over several shapes.

    Either method can win (O_DIRECT skips a copy, buffered reads get the
    kernel's readahead), and so can wide or narrow parallelism; each try reads
    whole files where the time bound allows. All tries are recorded, with the
    spread between the best and the worst.
    """
    tries: dict[str, Any] = {}
    per_try = max(seconds / 2, 0.05)
    for direct in (True, False):
        for threads, block in SHAPES:
            key = f"{'direct' if direct else 'buffered'}-{threads}x{block >> 20}M"
            cache.evict(paths)
            try:
                tries[key] = _result(*_timed_reads(paths, per_try, direct, threads, block),
                                     f"{'O_DIRECT' if direct else 'evicted, then buffered reads'}, "
                                     f"{threads} threads, {block >> 20} MiB blocks")
            except OSError as e:
                tries[key] = {"gbps": None, "method": f"{'O_DIRECT' if direct else 'buffered'} "
                                                      f"refused: {e}"}
                if direct:
                    break  # the filesystem refuses O_DIRECT: no other shape will differ
    cache.evict(paths)
    rates = [t["gbps"] for t in tries.values() if t.get("gbps")]
    best = max((t for t in tries.values() if t.get("gbps")), key=lambda t: t["gbps"])
    return dict(best, tries=tries, spread={"min_gbps": min(rates), "max_gbps": max(rates),
                                           "tries": len(rates)})


def page_cache_read(paths: list[str], seconds: float) -> dict[str, Any]:
    cache.warm(paths)
    resident = cache.residency(paths)
    best: dict[str, Any] | None = None
    for threads, block in SHAPES[1:]:
        r = _result(*_timed_reads(paths, seconds / 2, False, threads, block),
                    f"resident files ({resident:.0%}), buffered, {threads} threads, {block >> 20} MiB")
        if best is None or (r["gbps"] or 0) > (best["gbps"] or 0):
            best = r
    assert best is not None
    return dict(best, resident=resident)


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


def filesystem(paths: list[str]) -> dict[str, Any]:
    """The filesystem holding the checkpoint: its device number, mount point and type, from
    /proc/self/mountinfo (the longest mount point that contains the first file)."""
    path = os.path.realpath(paths[0]) if paths else os.getcwd()
    dev = os.stat(path).st_dev
    out: dict[str, Any] = {"dev": f"{os.major(dev)}-{os.minor(dev)}", "mount": None, "type": None}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                mount = fields[4].encode().decode("unicode_escape")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and \
                        len(mount) >= len(out["mount"] or ""):
                    out.update(mount=mount, type=right.split()[0] if right else None)
    except OSError:
        pass
    return out


def node_file(res_path: str, node: str, device: str, fs: dict[str, Any]) -> str:
    """One file per node, device and filesystem, shared by every run under RES_PATH."""
    name = f"{safe_component(node, 'node')}-{safe_component(device, 'device')}-{fs['dev']}"
    return os.path.join(res_path, "ceilings", f"{name}.json")


def _age_s(measured_at: Any) -> float | None:
    try:
        return time.time() - datetime.fromisoformat(str(measured_at)).timestamp()
    except ValueError:
        return None


def for_node(res_path: str, node: str, paths: list[str], device: torch.device, seconds: float,
             progress: Callable[[str], None] = print, ttl_s: float = 86400.0,
             fresh: bool = False) -> dict[str, Any]:
    """This node's ceilings: measured by the first pod that asks (under a lock), reused by
    every later pod of any run while younger than `ttl_s`; `fresh` measures again. The lock
    is an flock on a file beside the result, so two pods on one node never both measure,
    and a pod killed while measuring releases it."""
    fs = filesystem(paths)
    path = node_file(res_path, node, str(device), fs)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        waited = time.perf_counter()
        fcntl.flock(lock, fcntl.LOCK_EX)
        waited = time.perf_counter() - waited
        try:
            with open(path) as f:
                found = json.load(f)
            age = _age_s(found.get("measured_at")) if isinstance(found, dict) else None
            if not fresh and isinstance(found, dict) and found.get("device") == str(device) \
                    and found.get("ceilings") and age is not None and 0 <= age <= ttl_s:
                progress(f"ceilings: reusing {path} (measured {age / 3600:.1f} h ago by "
                         f"{found.get('measured_by')})")
                return dict(found["ceilings"], source="reused", node=node, file=path,
                            filesystem=fs.get("mount"), measured_at=found.get("measured_at"),
                            lock_wait_s=waited)
        except (OSError, ValueError):
            pass
        measured = measure(paths, device, seconds, progress)
        write_json_atomic(path, {"schema": "loadbench.ceilings/2", "node": node, "device": str(device),
                                 "filesystem": fs, "ceilings": measured,
                                 "measured_by": os.environ.get("POD_NAME") or f"pid {os.getpid()}",
                                 "measured_at": datetime.now(timezone.utc).isoformat()})
        return dict(measured, source="measured", node=node, file=path, filesystem=fs.get("mount"),
                    lock_wait_s=waited)


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
