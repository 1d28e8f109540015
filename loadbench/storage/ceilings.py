"""What this machine allows: the limits a load can be compared with.

Measured in the pod, on the checkpoint's own files, each bounded in time:
- storage read: the files read with O_DIRECT (bypassing the page cache) and,
  evicted, with buffered reads, each with several thread counts and block
  sizes, and with fio (O_DIRECT, libaio, iodepth 16 and 64) where it is on
  PATH; the best single-process figure is kept and the spread recorded (a loader that beats a
  4-second, one-shape sample proved it was no ceiling);
- storage read aggregate: 1, 2 and 4 reader processes at once (and fio's
  multi-job runs where fio is on PATH): what concurrent pods can share;
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
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
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


def timed_reads(paths: list[str], seconds: float, direct: bool, threads: int = THREADS,
                block: int = BLOCK, rotate: float = 0.0) -> tuple[int, float]:
    """Read the files in `block` pieces from `threads` threads until done or out of time.
    `rotate` starts that fraction into the files (concurrent readers do not march in step)."""
    jobs = [(p, off) for p in paths for off in range(0, os.path.getsize(p), block)]
    cut = int(len(jobs) * rotate)
    jobs = jobs[cut:] + jobs[:cut]
    jobs.reverse()  # pop() takes them in file order, as a sequential loader would
    lock = threading.Lock()
    total = [0]
    deadline = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def worker() -> None:
        buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
        fds: dict[str, int] = {}
        first = True  # every thread reads at least one block, however late it starts
        try:
            while first or time.perf_counter() < deadline:
                first = False
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

    elapsed = run_workers(worker, threads, errors)  # before total[0] is read: the workers fill it
    return total[0], elapsed


def run_workers(worker: Callable[[], None], n: int, errors: list[BaseException],
                name: str = "loadbench-read") -> float:
    """Run `worker` on n threads at once; seconds from the first start to the last end. The
    workers append what they raise to `errors`; the first is raised here."""
    start = time.perf_counter()
    pool = [threading.Thread(target=worker, name=f"{name}-{i}") for i in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


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
    if shutil.which("fio"):
        for numjobs, iodepth in FIO_SHAPES:
            key = f"fio-direct-{numjobs}j-qd{iodepth}"
            cache.evict(paths)
            try:
                tries[key] = _fio(paths, per_try, True, numjobs, iodepth)
            except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
                tries[key] = {"gbps": None, "method": f"fio refused: {e}"}
        cache.evict(paths)
        try:
            tries["fio-buffered-4j"] = _fio(paths, per_try, False, 4, 1)
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
            tries["fio-buffered-4j"] = {"gbps": None, "method": f"fio refused: {e}"}
    for direct in (True, False):
        for threads, block in SHAPES:
            key = f"{'direct' if direct else 'buffered'}-{threads}x{block >> 20}M"
            cache.evict(paths)
            try:
                tries[key] = _result(*timed_reads(paths, per_try, direct, threads, block),
                                     f"{'O_DIRECT' if direct else 'evicted, then buffered reads'}, "
                                     f"{threads} threads, {block >> 20} MiB blocks")
            except OSError as e:
                tries[key] = {"gbps": None, "method": f"{'O_DIRECT' if direct else 'buffered'} "
                                                      f"refused: {e}"}
                if direct:
                    break  # the filesystem refuses O_DIRECT: no other shape will differ
    cache.evict(paths)
    # One process's figure: fio's multi-job runs are several processes, so they count only
    # towards the aggregate.
    single = [t for k, t in tries.items() if t.get("gbps") and not (k.startswith("fio") and
                                                                   "-1j-" not in k)]
    if not single:
        return {"gbps": None, "method": "no storage read completed (every try was refused or read "
                                         "nothing)", "tries": tries}
    best = max(single, key=lambda t: t["gbps"])
    return dict(best, tries=tries, spread=_spread(tries))


READERS = (2, 4)  # concurrent reader processes for the aggregate (1 is the single-process figure)
FIO_SHAPES = ((1, 16), (1, 64), (4, 16), (4, 64))  # (numjobs, iodepth), O_DIRECT, 8 MiB blocks


def _fio(paths: list[str], seconds: float, direct: bool, numjobs: int, iodepth: int) -> dict[str, Any]:
    """fio, as storage engineers measure a disk: sequential reads of the checkpoint's own files.

    Several jobs read disjoint ranges of the largest file (`offset_increment`): fio's jobs all
    start at offset 0 of the same files otherwise, and three of four buffered jobs then read
    what the first put in the page cache (an H200 machine's 1.7 GB/s disk measured 5.2).
    """
    block = 8 << 20
    span = 0
    if numjobs > 1:
        big = max(paths, key=os.path.getsize)
        span = os.path.getsize(big) // numjobs // block * block
        if not span:
            raise ValueError(f"{big} is under {numjobs} x 8 MiB: too small for {numjobs} jobs")
        paths = [big]
    names = ":".join(p.replace(":", "\\:") for p in paths)
    engine = ["--ioengine=libaio", f"--iodepth={iodepth}"] if direct else ["--ioengine=psync"]
    ranges = [f"--size={span}", f"--offset_increment={span}"] if span else []
    cmd = ["fio", "--name=loadbench", f"--filename={names}", "--rw=read", "--bs=8M",
           f"--direct={int(direct)}", f"--numjobs={numjobs}", "--group_reporting", *ranges,
           f"--runtime={max(1, round(seconds))}", "--readonly", "--output-format=json", *engine]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if proc.returncode:
        raise OSError(f"fio exited {proc.returncode}: {proc.stderr.strip()[-200:]}")
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    read = out["jobs"][0]["read"]
    seconds_run = read["runtime"] / 1000 if read.get("runtime") else seconds
    how = f"libaio iodepth {iodepth}" if direct else "psync, evicted first"
    return _result(int(read["io_bytes"]), seconds_run,
                   f"fio {out.get('fio version', '')}, {'O_DIRECT' if direct else 'buffered'}, {how}, "
                   f"{numjobs} job(s), 8 MiB blocks"
                   + (f", each {span >> 20} MiB of {os.path.basename(paths[0])}" if span else ""))


def concurrent_readers(paths: list[str], seconds: float, direct: bool, threads: int, block: int,
                       n: int) -> dict[str, Any]:
    """N reader processes started together, each reading the checkpoint as one pod would: the
    aggregate GB/s is what N concurrent cold pods can share on this node."""
    cache.evict(paths)
    start_at = time.time() + 1.0  # every process imported and waiting before the first read
    job = {"paths": paths, "seconds": seconds, "direct": direct, "threads": threads, "block": block,
           "start_at": start_at}
    procs = [subprocess.Popen([sys.executable, "-m", "loadbench.storage.readers",
                               json.dumps(dict(job, rotate=i / n))], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    done = [p.communicate(timeout=seconds + 120) for p in procs]
    bad = [err.strip()[-200:] for p, (_, err) in zip(procs, done) if p.returncode]
    if bad:
        raise OSError(f"a reader process failed: {bad[0]}")
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in done]
    span = max(g["end"] for g in got) - min(g["start"] for g in got)
    return _result(sum(g["bytes"] for g in got), span,
                   f"{n} reader processes at once, {'O_DIRECT' if direct else 'evicted, buffered'}, "
                   f"{threads} threads x {block >> 20} MiB each")


def storage_aggregate(paths: list[str], seconds: float, single: dict[str, Any]) -> dict[str, Any]:
    """The node's storage read for 1, 2 and 4 concurrent readers; the best aggregate is kept.
    With fio on PATH its multi-job runs are tries too."""
    direct = single.get("method", "").startswith("O_DIRECT")
    shape = next(((t, b) for t, b in SHAPES if f"{t} threads, {b >> 20} MiB" in single.get("method", "")),
                 SHAPES[1])
    tries: dict[str, Any] = {"readers-1": {k: single.get(k) for k in ("gbps", "bytes", "seconds", "method")}}
    for n in READERS:
        try:
            tries[f"readers-{n}"] = concurrent_readers(paths, max(seconds / 2, 0.05), direct, *shape, n)
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            tries[f"readers-{n}"] = {"gbps": None, "method": f"{n} readers failed: {e}"}
    cache.evict(paths)
    read = [t for t in tries.values() if t.get("gbps")]
    if not read:
        return {"gbps": None, "method": "no concurrent read completed", "tries": tries}
    return dict(max(read, key=lambda t: t["gbps"]), tries=tries, spread=_spread(tries))


def page_cache_read(paths: list[str], seconds: float) -> dict[str, Any]:
    cache.warm(paths)
    resident = cache.residency(paths)
    best: dict[str, Any] | None = None
    for threads, block in SHAPES[1:]:
        r = _result(*timed_reads(paths, seconds / 2, False, threads, block),
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


def _spread(tries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The best and worst rate of the tries that read something (at least one did)."""
    rates = [t["gbps"] for t in tries.values() if t.get("gbps")]
    return {"min_gbps": min(rates), "max_gbps": max(rates), "tries": len(rates)}


def measure(paths: list[str], device: torch.device, seconds: float,
            progress: Callable[[str], None] = print) -> dict[str, Any]:
    """All ceilings, each bounded by `seconds`; missing ones say why."""
    out: dict[str, Any] = {}
    progress(f"ceilings: storage read of {len(paths)} file(s) (<= {seconds:g} s)")
    out["storage_read"] = storage_read(paths, seconds)
    progress(f"ceilings: storage read by 1, 2 and 4 concurrent reader processes (<= {seconds:g} s)")
    out["storage_read_aggregate"] = storage_aggregate(paths, seconds, out["storage_read"])
    fio = {k: t for k, t in out["storage_read"]["tries"].items() if k.startswith("fio") and
           "-1j-" not in k and t.get("gbps")}
    if fio:  # fio's multi-job runs are concurrent readers too
        out["storage_read_aggregate"]["tries"].update(fio)
        tries = out["storage_read_aggregate"]["tries"]
        best = max(tries.values(), key=lambda t: t.get("gbps") or 0)
        out["storage_read_aggregate"].update({k: best[k] for k in ("gbps", "bytes", "seconds", "method")})
        out["storage_read_aggregate"]["spread"] = _spread(tries)
    progress(f"ceilings: page-cache read (<= {seconds:g} s)")
    out["page_cache_read"] = page_cache_read(paths, seconds)
    out.update(device_ceilings(device, seconds, progress))
    return out


def device_ceilings(device: torch.device, seconds: float,
                    progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Pinned and pageable host-to-device copies (CUDA only; elsewhere they say why not)."""
    if device.type != "cuda":
        reason = {"gbps": None, "method": f"not measured: device is {device.type}"}
        return {"h2d_pinned": dict(reason), "h2d_pageable": dict(reason)}
    progress("ceilings: pinned and pageable host-to-device copies")
    return {"h2d_pinned": host_to_device(device, True, seconds),
            "h2d_pageable": host_to_device(device, False, seconds)}


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
    every later pod of any run while younger than `ttl_s`; `fresh` measures again."""
    fs = filesystem(paths)
    return dict(_shared(node_file(res_path, node, str(device), fs), node, str(device),
                        {"filesystem": fs}, lambda: measure(paths, device, seconds, progress),
                        progress, ttl_s, fresh), filesystem=fs.get("mount"))


def endpoint_file(res_path: str, node: str, device: str, endpoint: str, bucket: str, prefix: str
                  ) -> str:
    """One file per node, device, S3 endpoint and checkpoint (bucket and prefix: the GET ceiling
    reads its largest object): what this node's network and that server allow does not depend on
    the run. The endpoint is redacted (no credentials); the prefix enters as a hash."""
    digest = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:12]
    name = (f"{safe_component(node, 'node')}-{safe_component(device, 'device')}-s3-"
            f"{safe_component(endpoint, 'endpoint')}-{safe_component(bucket, 'bucket')}-{digest}")
    return os.path.join(res_path, "ceilings", f"{name}.json")


def for_endpoint(res_path: str, node: str, device: torch.device, endpoint: str, bucket: str, prefix: str,
                 measure_all: Callable[[], dict[str, Any]], progress: Callable[[str], None] = print,
                 ttl_s: float = 86400.0, fresh: bool = False) -> dict[str, Any]:
    """The ceilings of a pod that reads object storage (host-to-device copies and the GET
    ceiling, from `measure_all`): measured once per node, device, endpoint and checkpoint under
    a lock, reused like for_node's. Measured in every pod they cost ~11 s of a 20-35 s pod."""
    return _shared(endpoint_file(res_path, node, str(device), endpoint, bucket, prefix), node, str(device),
                   {"endpoint": endpoint, "bucket": bucket, "prefix": prefix}, measure_all, progress,
                   ttl_s, fresh)


def _shared(path: str, node: str, device: str, where: dict[str, Any],
            measure_all: Callable[[], dict[str, Any]], progress: Callable[[str], None],
            ttl_s: float, fresh: bool) -> dict[str, Any]:
    """Read the stored ceilings at `path` if they are this device's and younger than ttl_s,
    else measure and store them. The lock is an flock on a file beside the result, so two pods
    on one node never both measure, and a pod killed while measuring releases it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        waited = time.perf_counter()
        fcntl.flock(lock, fcntl.LOCK_EX)
        waited = time.perf_counter() - waited
        try:
            with open(path) as f:
                found = json.load(f)
            age = _age_s(found.get("measured_at")) if isinstance(found, dict) else None
            if not fresh and isinstance(found, dict) and found.get("device") == device \
                    and all(found.get(k) == v for k, v in where.items()) \
                    and isinstance(found.get("ceilings"), dict) and age is not None and 0 <= age <= ttl_s:
                progress(f"ceilings: reusing {path} (measured {age / 3600:.1f} h ago by "
                         f"{found.get('measured_by')})")
                return dict(found["ceilings"], source="reused", node=node, file=path,
                            measured_at=found.get("measured_at"), lock_wait_s=waited)
        except (OSError, ValueError):
            pass
        measured = measure_all()
        write_json_atomic(path, {"schema": "loadbench.ceilings/2", "node": node, "device": device,
                                 **where, "ceilings": measured,
                                 "measured_by": os.environ.get("POD_NAME") or f"pid {os.getpid()}",
                                 "measured_at": datetime.now(timezone.utc).isoformat()})
        return dict(measured, source="measured", node=node, file=path, lock_wait_s=waited)


def limits_for(resident: float, source: str = "local") -> tuple[str, str]:
    """The two ceilings that bound a load starting at this residency: the read
    (GETs from object storage; else storage when mostly evicted, page cache when
    mostly resident), then the pinned host-to-device copy."""
    if source == "s3":
        return "s3_get", "h2d_pinned"
    return ("storage_read" if resident < 0.5 else "page_cache_read"), "h2d_pinned"


def bound(ceilings: dict[str, Any] | None, resident: float, source: str = "local"
          ) -> tuple[str | None, float | None]:
    """(name, GB/s) of the lower of the two limits_for(resident) that were measured."""
    found = [(n, ((ceilings or {}).get(n) or {}).get("gbps")) for n in limits_for(resident, source)]
    candidates: list[tuple[str, float]] = [(n, float(g)) for n, g in found if g]
    if not candidates:
        return None, None
    return min(candidates, key=lambda c: c[1])
