"""Tensor-parallel loads (TP_SIZE=N): N rank processes, one result document per library variant.

The pod process starts N ranks the way torchrun would: subprocesses of
`python -m loadbench.measure.tp FOLDER` with RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, the rest of the environment
(NCCL_* included) as it is. Ranks join one process group: NCCL on CUDA (rank
r on cuda:r), gloo on CPU. As the TP_SIZE=1 pod is one process for every
library, the ranks are started once per pod and run one job per library
variant (imports, CUDA context and process group are not paid per library).
Per trial of a job:

    rank 0 brings the page cache into the asked state and measures it
    barrier; every rank measures the residency of the files it reads
    barrier -> clock starts on every rank
    each rank loads ONLY its slices (the library's `load_tp`), synchronizes
    barrier -> clock stops
    each rank verifies its slices against the manifest's per-slice checksums

The parent hands a job over as FOLDER/job-<k>.json; ranks append one JSON line
per event to FOLDER/rank-<r>.jsonl (up, ready, trial, done, error) and the
parent reads those, never a rank's stdout (which goes to the pod's stderr as
log lines). A job's setup is agreed by all ranks (an all-reduce) before its
trials, so a setup error on one rank (a missing file, say) is an error
document while the ranks stay in step for the next job.

A rank that crashes or hangs cannot hang the pod: the parent waits with
deadlines (startup, job setup, each trial) and on a crash or a deadline stops
every rank (SIGTERM, then SIGKILL, by process group: each rank leads its own)
and writes an error document; a later variant starts fresh ranks. Ranks also
die with the parent (PR_SET_PDEATHSIG) and leave when it exits (FOLDER/stop).

Across pods (benchmark-tp-multinode.yaml): a pod whose environment has
WORLD_SIZE>1 (with RANK, MASTER_ADDR, MASTER_PORT, as the Indexed Job gives
them) is ONE rank of a group of WORLD_SIZE pods: its single rank process joins
the group at MASTER_ADDR:MASTER_PORT as global rank RANK, so the barriers (and
the clock) span every pod. Each rank reads and verifies its slices of the
TP_SIZE=WORLD_SIZE layout; every pod's local rank prepares its own node's page
cache. After each trial the ranks all-gather their records, so every pod
builds the same document and exit code; only global rank 0's pod writes it.
Only one rank per pod (TP_SIZE=1) is supported across pods.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping

import torch

from loadbench import config, loaders, machine, models
from loadbench.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    BadInput,
    CheckpointError,
    ConfigError,
    one_line,
)
from loadbench.loaders.context import LoadContext
from loadbench.measure import checksums, trial
from loadbench.measure.document import error_info, now
from loadbench.measure.tp_plan import RankPlan
from loadbench.storage import cache, ceilings
from loadbench.storage.checkpoint import Checkpoint, open_checkpoint
from loadbench.storage.files import write_json_atomic

log = trial.log
STARTUP_TIMEOUT_S = 600.0     # imports, process group, CUDA context; a job's checkpoint checks
TRIAL_TIMEOUT_BASE_S = 300.0  # + the checkpoint's bytes at a pessimistic 50 MB/s
TRIAL_TIMEOUT_RATE = 50e6
STOP_GRACE_S = 5.0
POLL_S = 0.02

Records = list[dict[str, Any]]


class TPNotSupported(BadInput):
    """The library has no tensor-parallel loader in loadbench."""


class RankFailed(RuntimeError):
    """A rank crashed, reported an error, or did not answer in time. `fatal`: the ranks are
    out of step (or gone) and must be stopped; otherwise they wait for the next job."""

    def __init__(self, message: str, rank: int | None = None, bad_input: bool = False,
                 error: dict[str, Any] | None = None, fatal: bool = True) -> None:
        super().__init__(message)
        self.rank, self.bad_input, self.error, self.fatal = rank, bad_input, error, fatal


@dataclass(frozen=True)
class Multinode:
    """This pod is global rank `rank` of a group of `world` pods meeting at addr:port."""
    rank: int
    world: int
    addr: str
    port: int


def multinode(env: Mapping[str, str], tp_size: int) -> Multinode | None:
    """The group across pods that WORLD_SIZE>1 in the pod's environment asks for; None for one pod.
    ConfigError for what loadbench cannot run (more than one rank per pod, a bad RANK, ...)."""
    raw = (env.get("WORLD_SIZE") or "").strip()
    if raw in ("", "1"):
        return None
    try:
        world = int(raw)
        rank = int((env.get("RANK") or "").strip())
        port = int((env.get("MASTER_PORT") or "").strip())
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={raw!r}, RANK={env.get('RANK')!r}, MASTER_PORT="
                          f"{env.get('MASTER_PORT')!r}: ranks across pods need integers (RANK the "
                          f"completion index, MASTER_PORT rank 0's port)") from None
    addr = (env.get("MASTER_ADDR") or "").strip()
    if world < 1 or not 0 <= rank < world or not 0 < port < 65536 or not addr:
        raise ConfigError(f"WORLD_SIZE={world}, RANK={rank}, MASTER_ADDR={addr!r}, MASTER_PORT={port}: "
                          f"ranks across pods need 0 <= RANK < WORLD_SIZE, rank 0's address and a port")
    if tp_size != 1:
        raise ConfigError(f"TP_SIZE={tp_size} with WORLD_SIZE={world}: across pods loadbench runs one "
                          f"rank per pod; set TP_SIZE=1 (the group is the WORLD_SIZE pods, and the "
                          f"checkpoint is saved with TP_SIZE=WORLD_SIZE), or use one pod with TP_SIZE GPUs")
    return Multinode(rank, world, addr, port)


# --- the launcher ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_env(base: dict[str, str], rank: int, world: int, port: int,
             multi: Multinode | None = None) -> dict[str, str]:
    """What torchrun gives a rank on one node (or, across pods, the pod's one rank: global rank
    RANK of WORLD_SIZE at the pod's MASTER_ADDR); everything else (NCCL_* included) as it is."""
    env = dict(base)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
    local, nodes = (rank, world) if multi is None else (0, 1)
    node, addr = (0, "127.0.0.1") if multi is None else (multi.rank, multi.addr)
    if multi is not None:
        rank, world, port = multi.rank, multi.world, multi.port
    env.update(RANK=str(rank), LOCAL_RANK=str(local), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(nodes),
               GROUP_RANK=str(node), ROLE_RANK=str(rank), ROLE_WORLD_SIZE=str(world), MASTER_ADDR=addr,
               MASTER_PORT=str(port), PYTHONUNBUFFERED="1")
    return env


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _is_error(rec: dict[str, Any]) -> bool:
    return rec.get("kind") == "error"


class RankGroup:
    """N rank processes and their record files; stopped, whatever happens, by `stop()`."""

    def __init__(self, world: int, folder: str, command: list[str],
                 environ: dict[str, str] | None = None, multi: Multinode | None = None) -> None:
        self.world, self.folder, self.command, self.multi = world, folder, command, multi
        self.first = multi.rank if multi else 0  # the global rank of local rank 0
        self.environ = dict(os.environ if environ is None else environ)
        self.procs: list[subprocess.Popen] = []
        self.records: list[Records] = [[] for _ in range(world)]
        self._offsets = [0] * world
        self.port = 0

    def path(self, rank: int) -> str:
        return os.path.join(self.folder, f"rank-{rank}.jsonl")

    def start(self) -> None:
        self.port = self.multi.port if self.multi else free_port()
        out = _stderr_fd()
        for rank in range(self.world):
            self.procs.append(subprocess.Popen(
                self.command, env=rank_env(self.environ, rank, self.world, self.port, self.multi),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True))

    def _read(self) -> None:
        for rank in range(self.world):
            try:
                with open(self.path(rank), "rb") as f:
                    f.seek(self._offsets[rank])
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1  # complete lines only
            for line in data[:end].splitlines():
                if line.strip():
                    self.records[rank].append(json.loads(line))
            self._offsets[rank] += end

    def wait(self, done: Callable[[Records], bool], timeout: float, what: str,
             failed: Callable[[dict[str, Any]], bool] = _is_error) -> None:
        """Until `done(records of the rank)` holds for every rank. RankFailed on a record that
        `failed` picks, on a rank that exited first, or at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            for rank, recs in enumerate(self.records):
                bad = next((r for r in recs if failed(r)), None)
                if bad:
                    e = bad.get("error") or {}
                    who = bad.get("rank", self.first + rank)
                    raise RankFailed(f"rank {who} failed during {bad.get('where') or what}: "
                                     f"{e.get('type')}: {e.get('message')}", who,
                                     bool(bad.get("bad_input")), e, bool(bad.get("fatal", True)))
            pending = [r for r in range(self.world) if not done(self.records[r])]
            if not pending:
                return
            for rank in pending:
                code = self.procs[rank].poll() if rank < len(self.procs) else None
                if code is not None:
                    self._read()  # its last words, if it wrote them before exiting
                    if done(self.records[rank]) or any(failed(r) for r in self.records[rank]):
                        break
                    how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                           else f"exited with code {code}")
                    raise RankFailed(f"rank {self.first + rank} {how} during {what}; the other ranks were "
                                     f"stopped", self.first + rank)
            if time.monotonic() > deadline:
                late = [self.first + r for r in pending]
                raise RankFailed(f"rank(s) {', '.join(map(str, late))} did not finish {what} within "
                                 f"{timeout:.0f} s (hung?); every rank was stopped", late[0])
            time.sleep(POLL_S)

    def finish(self, timeout: float = 10.0) -> list[int | None]:
        """Let the ranks exit on their own, then stop what is left."""
        end = time.monotonic() + timeout
        while any(p.poll() is None for p in self.procs) and time.monotonic() < end:
            time.sleep(POLL_S)
        return self.stop()

    def stop(self) -> list[int | None]:
        """Stop every rank still running: SIGTERM to its process group, SIGKILL after a grace."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in self.procs if p.poll() is None]
            for p in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)  # each rank leads its own group (start_new_session)
            end = time.monotonic() + STOP_GRACE_S
            while alive and time.monotonic() < end:
                alive = [p for p in alive if p.poll() is None]
                time.sleep(POLL_S)
            if not alive:
                break
        return [p.poll() for p in self.procs]


class Pool:
    """The pod's N ranks: started by the first TP variant, given one job per variant."""

    def __init__(self, world: int, device_type: str, timeout_s: float,
                 command: list[str] | None = None, multi: Multinode | None = None) -> None:
        self.folder = tempfile.mkdtemp(prefix="loadbench-tp-")
        write_json_atomic(os.path.join(self.folder, "pool.json"),
                          {"device": device_type, "timeout_s": timeout_s, "parent_pid": os.getpid(),
                           "multinode": multi is not None})
        program = command or [sys.executable, "-m", "loadbench.measure.tp"]
        self.group = RankGroup(world, self.folder, [*program, self.folder], multi=multi)
        self.jobs = 0
        self.closed = False

    def start(self) -> None:
        self.group.start()
        self.group.wait(_has("up"), STARTUP_TIMEOUT_S, "rank startup")

    def submit(self, job: dict[str, Any]) -> int:
        k = self.jobs
        write_json_atomic(os.path.join(self.folder, f"job-{k}.json"), job)
        self.jobs += 1
        return k

    def close(self) -> list[int | None]:
        """The ranks leave in order (process group destroyed), else are stopped."""
        if self.closed:
            return [p.poll() for p in self.group.procs]
        self.closed = True
        with contextlib.suppress(OSError):
            open(os.path.join(self.folder, "stop"), "w").close()
        codes = self.group.finish()
        shutil.rmtree(self.folder, ignore_errors=True)
        return codes

    def kill(self) -> list[int | None]:
        self.closed = True
        codes = self.group.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
        return codes


# --- the parent: one document per library variant -------------------------------------------

def rank_files(ckpt: Checkpoint, world: int) -> list[str]:
    """Per-rank files saved for this TP size (tensorizer), by rank; [] when the format has none."""
    entries = [e for e in ckpt.manifest["formats"][ckpt.format]["files"] if e.get("tp_size") == world]
    return [os.path.join(ckpt.folder, e["name"]) for e in sorted(entries, key=lambda e: e["rank"])]


def trial_timeout(model_bytes: int) -> float:
    return TRIAL_TIMEOUT_BASE_S + model_bytes / TRIAL_TIMEOUT_RATE


def _has(kind: str, job: int | None = None, index: int | None = None) -> Callable[[Records], bool]:
    return lambda recs: any(r.get("kind") == kind and (job is None or r.get("job") == job)
                            and (index is None or r.get("index") == index) for r in recs)


def _job_failed(job: int) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("kind") == "error" and (r.get("job") == job or r.get("fatal", True))


def _pool(shared: dict[str, Any], world: int, device: torch.device, timeout: float,
          command: list[str] | None, own: list[dict[str, Any]], multi: Multinode | None = None) -> Pool:
    pool = shared.get("tp_pool")
    if pool is not None and not pool.closed:
        return pool
    if pool is not None and multi is not None:  # the peers cannot meet again in step
        raise RankFailed(f"the group of {multi.world} pods was stopped during an earlier library "
                         f"variant and is not formed again; see that variant's error", multi.rank,
                         fatal=False)
    start = time.perf_counter()
    pool = Pool(world, device.type, timeout, command, multi)
    shared["tp_pool"] = pool
    atexit.register(pool.close)
    try:
        pool.start()
    except BaseException:
        pool.kill()
        raise
    where = (f"rank {multi.rank} of {multi.world} pods at {multi.addr}:{multi.port}" if multi
             else f"TP_SIZE={world}: {world} ranks")
    log(f"{where} up in {time.perf_counter() - start:.1f} s (pids "
        f"{', '.join(str(p.pid) for p in pool.group.procs)})")
    own.append({"name": "rank startup", "seconds": time.perf_counter() - start})
    return pool


def run_library_tp(lib: str, options: dict[str, Any], cfg: config.Settings, device: torch.device,
                   shared: dict[str, Any], pod: Any, command: list[str] | None = None,
                   multi: Multinode | None = None) -> tuple[dict[str, Any], int]:
    """run.run_library for TP_SIZE>1: the same document, written from N ranks' records. Across
    pods (`multi`), this pod runs one rank of the group, and gets every rank's records."""
    from loadbench.measure import run
    world = multi.world if multi else cfg.tp_size
    local = 1 if multi else world  # rank processes in this pod
    doc = run.library_document(lib, options, cfg, device)
    doc["tp_size"] = world
    label, spec = doc["label"], loaders.get(lib)
    own: list[dict[str, Any]] = []
    t = time.perf_counter()
    done, code, stage = 0, EXIT_OK, "prepare"
    pool: Pool | None = None
    try:
        mod = run.require(lib, cfg, device, doc)
        if not hasattr(mod, "load_tp"):
            raise TPNotSupported(f"library {lib!r}: tensor-parallel loading (TP_SIZE={world}) is not "
                                 f"supported for this library in loadbench yet; use TP_SIZE=1 for it, "
                                 f"or drop it from LIBRARIES")
        if device.type == "cuda" and torch.cuda.device_count() < local:
            raise ConfigError(f"TP_SIZE={local} needs {local} GPUs (one per rank), "
                              f"{torch.cuda.device_count()} visible: request nvidia.com/gpu: {local}")
        ckpt = open_checkpoint(cfg.model_path, spec.format, cfg.model_id, cfg.dtype)
        RankPlan.from_manifest(ckpt.manifest, 0, world)  # the layout exists, or exit 2 now
        per_rank = rank_files(ckpt, world)
        if hasattr(mod, "tp_file") and len(per_rank) != world:
            raise CheckpointError(f"{ckpt.folder} has no per-rank {spec.format} files for TP_SIZE="
                                  f"{world}: run save_models.py with TP_SIZE={world} and {lib} in LIBRARIES")
        files = per_rank if hasattr(mod, "tp_file") else ckpt.weight_files
        doc["model"] = dict(ckpt.manifest["model"], format=spec.format,
                            file_bytes=sum(os.path.getsize(p) for p in files), files=len(files))
        before = time.perf_counter()
        doc["ceilings"] = run.node_ceilings(cfg, ckpt.weight_files, device, shared)
        if doc["ceilings"] is not None and "ceilings_s" not in shared:
            shared["ceilings_s"] = time.perf_counter() - before
            own.append({"name": "ceilings", "seconds": shared["ceilings_s"]})
        if not cfg.skip_inference:
            doc["warnings"].append(f"inference is not run with TP_SIZE={world}: the ranks load and "
                                   f"verify their slices only")
        timeout = trial_timeout(ckpt.manifest["model"]["bytes"])
        stage = "rank startup"
        pool = _pool(shared, local, device, timeout, command, own, multi)
        stage = "setup"
        job = pool.submit({"library": lib, "label": label, "options": options, "model_path": cfg.model_path,
                           "format": spec.format, "model_id": cfg.model_id, "dtype": cfg.dtype,
                           "cache_mode": cfg.cache_mode, "num_trials": cfg.num_trials,
                           "cache_files": files, "rank_files": per_rank or None})
        group = pool.group
        doc["tp"] = {"backend": "nccl" if device.type == "cuda" else "gloo",
                     "launcher": "subprocesses with torchrun's variables, one set per pod",
                     "pids": [p.pid for p in group.procs], "job": job, "master_port": group.port,
                     "trial_timeout_s": timeout,
                     "devices": [f"cuda:{r % local}" if device.type == "cuda" else "cpu"
                                 for r in range(world)]}
        if multi:
            up = next(r for r in group.records[0] if r.get("kind") == "up")
            doc["tp"].update(multinode=True, launcher="one rank process per pod (WORLD_SIZE pods)",
                             master_addr=multi.addr, ranks=up.get("peers"))
        group.wait(_has("ready", job), STARTUP_TIMEOUT_S, "setup", _job_failed(job))
        own.append({"name": "prepare", "seconds": time.perf_counter() - t - sum(p["seconds"] for p in own)})
        t = time.perf_counter()
        model_bytes = ckpt.manifest["model"]["bytes"]
        for i in range(cfg.num_trials):
            stage = f"trial {i + 1}"
            group.wait(_has("trial", job, i), timeout, f"trial {i + 1}", _job_failed(job))
            recs = sorted((x for k in range(local) for x in
                           next(r for r in group.records[k] if _has("trial", job, i)([r]))["ranks"]),
                          key=lambda x: x["rank"])
            one = combine(recs, cfg.cache_mode, model_bytes, doc["ceilings"])
            one["library_info"] = dict(one.get("library_info") or {}, trial_timeout_s=timeout)
            bad_input = one.pop("bad_input", False)
            doc["trials"].append(one)
            done = i + 1
            doc["io_mode"] = recs[0].get("io_mode") or doc["io_mode"]
            doc["warnings"].extend(w for w in one.get("warnings") or [] if w not in doc["warnings"])
            log(trial.line(label, i, cfg.num_trials, one)
                + f" ({'group' if multi else 'pod'}: slowest of {world} ranks)")
            if one["status"] != "ok":
                code = max(code, EXIT_BAD_INPUT if bad_input else EXIT_FAILED)
        stage = "the end of the job"
        group.wait(_has("done", job), 60.0, stage, _job_failed(job))
        own.append({"name": "trials", "seconds": time.perf_counter() - t})
        if code:
            run.trials_failed(doc)
    except run.Terminated as e:
        if pool:
            pool.kill()
        raise run.terminated(doc, e, done, cfg.num_trials, pod, own,
                             f"; the {world} ranks were stopped") from None
    except RankFailed as e:
        if e.fatal and pool:
            pool.kill()
        doc["status"] = "error"
        doc["error"] = {"type": "RankFailed", "where": stage, "message": str(e)}
        if e.error:
            doc["error"]["rank_error"] = e.error
        if stage.startswith("trial"):
            doc["trials"].append(_failed_trial(cfg.cache_mode, e))
        log(f"{label}: {e}")
        code = EXIT_BAD_INPUT if e.bad_input else EXIT_FAILED
    except BadInput as e:
        code = run.failure(doc, e, label)
    except BaseException as e:
        if pool:
            pool.kill()  # out of step with the ranks: start afresh for the next variant
        if not isinstance(e, Exception):
            raise
        code = run.failure(doc, e, label)
    doc["finished_at"] = now()
    doc["pod"] = pod.record(own)
    return doc, code


def _failed_trial(mode: str, e: RankFailed) -> dict[str, Any]:
    one = trial.new_trial(mode)
    one.update(status="error", finished_at=now(),
               error={"type": "RankFailed", "message": str(e), "where": f"rank {e.rank}"})
    return one


RANK_KEYS = ("rank", "node", "pod", "status", "device", "resident_before", "skeleton_s", "weights_s",
             "total_s", "barrier_s", "verify_s", "bytes", "gbps", "tensors_verified", "mismatches",
             "peak_rss_bytes", "peak_device_bytes", "cache_s", "error", "started_at", "finished_at")


def combine(recs: Records, mode: str, model_bytes: int, measured: dict[str, Any] | None) -> dict[str, Any]:
    """One trial of the pod from its ranks' records: the pod's time is the slowest rank's."""
    one = trial.new_trial(mode)
    first = recs[0]
    starts = [r["started_at"] for r in recs if r.get("started_at")]
    ends = [r["finished_at"] for r in recs if r.get("finished_at")]
    one.update(ranks=[{k: r.get(k) for k in RANK_KEYS} for r in recs],
               resident_before=first.get("resident_all"), cache_s=first.get("cache_s"),
               warnings=list(dict.fromkeys(w for r in recs for w in r.get("warnings") or [])),
               library_info=first.get("library_info"),
               started_at=min(starts) if starts else None, finished_at=max(ends) if ends else now())
    errors = [r for r in recs if r["status"] == "error"]
    if errors:
        e = errors[0]["error"] or {}
        more = f" (and {len(errors) - 1} more rank(s))" if len(errors) > 1 else ""
        one.update(status="error", bad_input=all(r.get("bad_input") for r in errors),
                   error={"type": e.get("type"), "where": f"rank {errors[0]['rank']}: {e.get('where')}",
                          "message": f"rank {errors[0]['rank']}: {e.get('message')}{more}"})
        return one
    total = max(r["barrier_s"] for r in recs)
    skeleton = max((r["skeleton_s"] for r in recs if r.get("skeleton_s") is not None), default=None)
    device_peaks = [r["peak_device_bytes"] for r in recs if r.get("peak_device_bytes") is not None]
    rss = [r["peak_rss_bytes"] for r in recs if r.get("peak_rss_bytes") is not None]
    mismatches = [dict(m, rank=r["rank"], problem=f"rank {r['rank']}: {m['problem']}")
                  for r in recs for m in r.get("mismatches") or []]
    one.update(total_s=total, skeleton_s=skeleton, weights_s=total - (skeleton or 0.0),
               gbps=model_bytes / total / 1e9, verify_s=max(r.get("verify_s") or 0.0 for r in recs),
               peak_rss_bytes=sum(rss) if rss else None,
               peak_rss_method=f"sum over {len(recs)} ranks: {first.get('peak_rss_method')}",
               peak_device_bytes=max(device_peaks) if device_peaks else None,
               tensors_verified=sum(r.get("tensors_verified") or 0 for r in recs), mismatches=mismatches)
    # Only the read is a limit the ranks share; a host-to-device copy ceiling is per GPU.
    read = ceilings.limits_for(one["resident_before"] or 0.0)[0]
    limit = ((measured or {}).get(read) or {}).get("gbps")
    if limit:
        fraction = one["gbps"] / limit
        one.update(ceiling=read, ceiling_gbps=limit, ceiling_fraction=fraction,
                   ceiling_beaten=fraction > 1 + ceilings.BEATEN_MARGIN)
    if mismatches:
        one["status"] = "mismatch"
    return one


# --- the rank -------------------------------------------------------------------------------

class RecordFile:
    """A rank's record file: one JSON object a line, appended at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, **record: Any) -> None:
        line = (json.dumps(record, allow_nan=False, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _die_with_parent(parent: int | None) -> None:
    """A rank must not outlive the pod process that started it."""
    with contextlib.suppress(Exception):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        os._exit(1)  # the parent died before the line above


class Rank:
    """One rank: its device and process group for the pod, a checkpoint and plan per job."""

    def __init__(self, pool: dict[str, Any]) -> None:
        import torch.distributed as dist
        self.dist = dist
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local = int(os.environ.get("LOCAL_RANK", self.rank))
        self.pods = bool(pool.get("multinode"))  # one rank per pod, the group across pods
        self.who = {"node": os.environ.get("NODE_NAME") or socket.gethostname(),
                    "pod": os.environ.get("POD_NAME") or None}
        cuda = pool["device"] == "cuda"
        self.device = torch.device("cuda", self.local) if cuda else torch.device("cpu")
        machine.init_device(self.device)
        dist.init_process_group("nccl" if cuda else "gloo", rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=pool["timeout_s"] + 60),
                                **({"device_id": self.device} if cuda else {}))
        self.barrier()
        self.peers = self.gather(dict(self.who, rank=self.rank))

    def gather(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """Across pods, every rank's `obj` (each pod builds the same document); else this rank's."""
        if not self.pods:
            return [obj]
        got: list[Any] = [None] * self.world
        self.dist.all_gather_object(got, obj)
        return got

    def setup(self, job: dict[str, Any]) -> None:
        self.mod = loaders.require(job["library"])
        self.ckpt = open_checkpoint(job["model_path"], job["format"], job["model_id"], job["dtype"])
        self.plan = RankPlan.from_manifest(self.ckpt.manifest, self.rank, self.world)
        self.dtype = models.DTYPES[job["dtype"]]
        self.options = job["options"]
        self.files = job["cache_files"]
        self.own = [job["rank_files"][self.rank]] if job.get("rank_files") else self.files
        for path in self.own:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path} is missing; run save_models.py again")
        # Import the architecture's modeling code untimed, as a TP_SIZE=1 run does.
        models.skeleton(LoadContext(self.ckpt, self.device, self.dtype, self.options).config, self.dtype)

    def all_ok(self, ok: bool) -> bool:
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.device)
        self.dist.all_reduce(flag, op=self.dist.ReduceOp.MIN)
        return bool(flag.item())

    def barrier(self) -> None:
        if self.device.type == "cuda":
            self.dist.barrier(device_ids=[self.local])
        else:
            self.dist.barrier()

    def trial(self, mode: str) -> dict[str, Any]:
        trial.release(self.device)
        rec: dict[str, Any] = {"rank": self.rank, "device": str(self.device), "status": "ok",
                               "mismatches": [], "tensors_verified": 0, "warnings": [], **self.who}
        if self.local == 0:  # the pod's first rank, for its node's page cache
            t0 = time.perf_counter()
            rec["resident_all"] = cache.prepare(mode, self.files)
            rec["cache_s"] = time.perf_counter() - t0
            warning = cache.check(mode, rec["resident_all"])
            if warning:
                log("WARNING: " + warning)
                rec["warnings"].append(warning)
        self.barrier()
        rec["resident_before"] = cache.residency(self.own)
        ctx = LoadContext(self.ckpt, self.device, self.dtype, self.options)
        model, failure = None, None
        self.barrier()
        rec["started_at"] = now()
        with machine.PeakRSS() as rss:
            start = time.perf_counter()
            try:
                model = self.mod.load_tp(ctx, self.rank, self.world, self.plan)
                models.synchronize(self.device)
            except Exception as e:
                failure = e
            loaded = time.perf_counter()
            self.barrier()
            end = time.perf_counter()
        rec.update(io_mode=ctx.io_mode, library_info=ctx.info, barrier_s=end - start)
        if failure is not None:
            rec.update(status="error", error=error_info(failure, trial.where(failure)),
                       bad_input=isinstance(failure, BadInput), finished_at=now())
            log(f"rank {self.rank}: load failed: {one_line(failure)}")
            return rec
        skeleton_at = ctx.marks.get("skeleton")
        rec.update(total_s=loaded - start, skeleton_s=(skeleton_at - start) if skeleton_at else None,
                   weights_s=loaded - (skeleton_at or start), peak_rss_bytes=rss.peak,
                   peak_rss_method=rss.method,
                   peak_device_bytes=torch.cuda.max_memory_allocated(self.device)
                   if self.device.type == "cuda" else None)
        try:
            state = {k: (v.to_local() if hasattr(v, "to_local") else v)  # transformers' DTensors
                     for k, v in models.state(model).items()}
            rec["bytes"] = sum(v.numel() * v.element_size() for v in state.values())
            rec["gbps"] = rec["bytes"] / rec["total_s"] / 1e9 if rec["total_s"] > 0 else None
            t0 = time.perf_counter()
            verified, mismatches = checksums.verify(state, self.plan.expected, self.device)
            rec.update(verify_s=time.perf_counter() - t0, tensors_verified=verified, mismatches=mismatches)
            if mismatches:
                rec["status"] = "mismatch"
                log(f"rank {self.rank}: {len(mismatches)} slice(s) differ from the manifest, first: "
                    f"{mismatches[0]['tensor']}: {mismatches[0]['problem']}")
            del state
        except Exception as e:
            rec.update(status="error", error=error_info(e, trial.where(e)))
        rec["finished_at"] = now()
        del model
        trial.release(self.device)
        return rec

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.barrier()
            self.dist.destroy_process_group()


def next_job(folder: str, k: int) -> dict[str, Any] | None:
    """Job k when the parent hands it over; None when the pod is done."""
    path, stop = os.path.join(folder, f"job-{k}.json"), os.path.join(folder, "stop")
    while True:
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        if os.path.exists(stop) or not os.path.isdir(folder):
            return None
        time.sleep(POLL_S)


def worker_main(argv: list[str]) -> int:
    """`python -m loadbench.measure.tp FOLDER`: one rank, from startup to the pod's last job."""
    folder = argv[0]
    with open(os.path.join(folder, "pool.json")) as f:
        pool = json.load(f)
    _die_with_parent(pool.get("parent_pid"))
    rank = int(os.environ["RANK"])
    out = RecordFile(os.path.join(folder, f"rank-{os.environ.get('LOCAL_RANK', rank)}.jsonl"))
    try:
        me = Rank(pool)
        out.write(kind="up", rank=rank, device=str(me.device), pid=os.getpid(), peers=me.peers)
    except BaseException as e:
        error = error_info(e, trial.where(e))
        if pool.get("multinode"):  # most likely: a peer pod never arrived
            error["message"] = (f"the group of {os.environ['WORLD_SIZE']} pods did not form at "
                                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} (timeout "
                                f"{pool['timeout_s'] + 60:.0f} s; a peer pod missing or unreachable?): "
                                f"{error['message']}")
        out.write(kind="error", where="rank startup", rank=rank, error=error,
                  bad_input=isinstance(e, BadInput))
        log(f"rank {rank}: startup failed: {one_line(e)}")
        return EXIT_BAD_INPUT if isinstance(e, BadInput) else EXIT_FAILED
    k = 0
    while (job := next_job(folder, k)) is not None:
        where = "setup"
        try:
            problem = None
            try:
                me.setup(job)
            except Exception as e:
                problem = e
            mine = None if problem is None else {
                "rank": rank, "error": error_info(problem, trial.where(problem)),
                "bad_input": isinstance(problem, BadInput)}
            if problem is not None:
                log(f"rank {rank}: setup of {job['library']} failed: {one_line(problem)}")
            if me.pods:  # every pod must run the same variant, and learns what failed where
                seen = me.gather({"label": job["label"], "problem": mine})
                if len({x["label"] for x in seen}) > 1:
                    raise RuntimeError("pods out of step: " + ", ".join(
                        f"rank {r} runs {x['label']}" for r, x in enumerate(seen)))
                mine = next((x["problem"] for x in seen if x["problem"]), None)
                failed = mine is not None
            else:
                failed = not me.all_ok(problem is None)  # every rank agrees, so all stay in step
            if failed:
                if mine is not None:
                    out.write(kind="error", job=k, where="setup", fatal=False, **mine)
                else:
                    out.write(kind="skipped", job=k, rank=rank)
                k += 1
                continue
            out.write(kind="ready", job=k, rank=rank)
            for i in range(job["num_trials"]):
                where = f"trial {i + 1}"
                out.write(kind="trial", job=k, index=i, ranks=me.gather(me.trial(job["cache_mode"])))
            out.write(kind="done", job=k, rank=rank)
        except BaseException as e:  # outside a load (cache, a barrier): the pod stops the ranks
            out.write(kind="error", job=k, where=where, rank=rank, error=error_info(e, trial.where(e)),
                      bad_input=isinstance(e, BadInput), fatal=True)
            log(f"rank {rank}: {where} failed: {one_line(e)}")
            return EXIT_FAILED
        k += 1
    me.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
