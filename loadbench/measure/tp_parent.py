"""Tensor-parallel loads (TP_SIZE=N), the pod's side: the `Ranks` strategy.

measure/variant.py runs a variant's steps; this strategy hands the loads to N
rank processes (measure/tp_launch.py starts them, measure/tp_rank.py is one)
and builds each trial of the one document from the ranks' records: the pod's
time is the slowest rank's, from a barrier before the load to a barrier after
every rank has loaded and synchronized. Each rank records the bytes it read
from storage and the share it copied to its device.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any

import torch

from loadbench import config, loaders
from loadbench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, CheckpointError, ConfigError
from loadbench.measure import trial
from loadbench.measure.document import now, where
from loadbench.measure.pod import PodState, failure, log, phase
from loadbench.measure.tp_launch import (
    STARTUP_TIMEOUT_S,
    Multinode,
    RankFailed,
    RankPool,
    Records,
    TPJob,
    has,
    job_failed,
)
from loadbench.measure.tp_plan import RankPlan
from loadbench.schema.result import RANK_KEYS
from loadbench.storage import ceilings
from loadbench.storage.checkpoint import Checkpoint

TRIAL_TIMEOUT_BASE_S = 300.0  # + the checkpoint's bytes at a pessimistic 50 MB/s
TRIAL_TIMEOUT_RATE = 50e6


class TPNotSupported(BadInput):
    """The library has no tensor-parallel loader in loadbench."""


def rank_files(ckpt: Checkpoint, world: int) -> list[str]:
    """Per-rank files saved for this TP size (tensorizer), by rank; [] when the format has none."""
    entries = [e for e in ckpt.manifest["formats"][ckpt.format]["files"] if e.get("tp_size") == world]
    return [os.path.join(ckpt.folder, e["name"]) for e in sorted(entries, key=lambda e: e["rank"])]


def trial_timeout(model_bytes: int) -> float:
    return TRIAL_TIMEOUT_BASE_S + model_bytes / TRIAL_TIMEOUT_RATE


def rank_pool(state: PodState, world: int, device: torch.device, timeout: float,
              command: list[str] | None, own: list[dict[str, Any]],
              multi: Multinode | None = None) -> RankPool:
    """The pod's ranks, started by the first TP variant and kept for the next ones."""
    pool: RankPool | None = state.pool
    if pool is not None and not pool.closed:
        return pool
    if pool is not None and multi is not None:  # the peers cannot meet again in step
        raise RankFailed(f"the group of {multi.world} pods was stopped during an earlier library "
                         f"variant and is not formed again; see that variant's error", multi.rank,
                         fatal=False)
    start = time.perf_counter()
    pool = RankPool(world, device.type, timeout, command, multi)
    state.pool = pool
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
    own.append(phase("rank startup", time.perf_counter() - start))
    return pool


class Ranks:
    """TP_SIZE>1, or one rank of a group of pods (`multi`): N rank processes load, each its slices."""

    def __init__(self, cfg: config.Settings, device: torch.device, state: PodState,
                 multi: Multinode | None = None, command: list[str] | None = None) -> None:
        self.cfg, self.device, self.state, self.multi, self.command = cfg, device, state, multi, command
        self.world = multi.world if multi else cfg.tp_size
        self.local = 1 if multi else self.world  # rank processes in this pod
        self.pool: RankPool | None = None
        self.source: Any = None
        self.stage = "prepare"

    def check(self, lib: str, mod: Any, doc: dict[str, Any]) -> None:
        self.lib = lib
        doc["tp_size"] = self.world
        cfg = self.cfg
        if cfg.model_uri and not (loaders.get(lib).tp_s3 and cfg.reads_bucket(lib)):
            able = ", ".join(x.name for x in loaders.LIBRARIES if x.tp_s3)
            raise ConfigError(f"MODEL_URI with TP_SIZE={self.world}: the ranks read object storage "
                              f"themselves (S3_READ=native, S3_CACHE=none), which {able} can; "
                              f"{lib!r} with S3_READ={cfg.s3_read}, S3_CACHE={cfg.s3_cache} cannot. "
                              f"For the others, download the checkpoint to MODEL_PATH first (a pod "
                              f"with TP_SIZE=1 and S3_CACHE=node) and run TP from there")
        if not loaders.get(lib).supports_tp:
            raise TPNotSupported(f"library {lib!r}: tensor-parallel loading (TP_SIZE={self.world}) is "
                                 f"not supported for this library in loadbench yet; use TP_SIZE=1 for "
                                 f"it, or drop it from LIBRARIES")
        if self.device.type == "cuda" and torch.cuda.device_count() < self.local:
            raise ConfigError(f"TP_SIZE={self.local} needs {self.local} GPUs (one per rank), "
                              f"{torch.cuda.device_count()} visible: request nvidia.com/gpu: {self.local}")

    def files(self, ckpt: Checkpoint) -> list[str]:
        RankPlan.from_manifest(ckpt.manifest, 0, self.world)  # the layout exists, or exit 2 now
        self.per_rank = rank_files(ckpt, self.world)
        spec = loaders.get(self.lib)
        if spec.tp_files and len(self.per_rank) != self.world:
            where = self.cfg.model_uri or ckpt.folder
            raise CheckpointError(f"{where} has no per-rank {spec.format} files for TP_SIZE="
                                  f"{self.world}: run save_models.py with TP_SIZE={self.world} and "
                                  f"{spec.name} in LIBRARIES")
        if not spec.tp_files:
            self.per_rank = []
        self.files_read = self.per_rank or ckpt.weight_files
        if self.cfg.model_uri:  # the ranks read the bucket: nothing local for cache modes to act on
            self.files_read = []
        return self.files_read

    def prepare(self, lib: str, mod: Any, options: dict[str, Any], ckpt: Checkpoint,
                doc: dict[str, Any], own: list[dict[str, Any]]) -> None:
        cfg, device = self.cfg, self.device
        self.doc, self.model_bytes = doc, ckpt.manifest["model"]["bytes"]
        if not cfg.skip_inference:
            doc["warnings"].append(f"inference is not run with TP_SIZE={self.world}: the ranks load "
                                   f"and verify their slices only")
        self.timeout = trial_timeout(self.model_bytes)
        self.stage = "rank startup"
        self.pool = rank_pool(self.state, self.local, device, self.timeout, self.command, own, self.multi)
        self.stage = "setup"
        self.job = self.pool.submit(TPJob(
            library=lib, label=doc["label"], options=options, model_path=ckpt.root,
            format=ckpt.format, model_id=cfg.model_id, dtype=cfg.dtype, cache_mode=cfg.cache_mode,
            num_trials=cfg.num_trials, cache_files=self.files_read,
            rank_files=None if cfg.model_uri else (self.per_rank or None), remote=self._remote(ckpt)))
        group = self.pool.group
        doc["tp"] = {"backend": "nccl" if device.type == "cuda" else "gloo",
                     "launcher": "subprocesses with torchrun's variables, one set per pod",
                     "pids": [p.pid for p in group.procs], "job": self.job, "master_port": group.port,
                     "trial_timeout_s": self.timeout,
                     "devices": [f"cuda:{r % self.local}" if device.type == "cuda" else "cpu"
                                 for r in range(self.world)]}
        if self.multi:
            up = next(r for r in group.records[0] if r.get("kind") == "up")
            doc["tp"].update(multinode=True, launcher="one rank process per pod (WORLD_SIZE pods)",
                             master_addr=self.multi.addr, ranks=up.get("peers"))
        group.wait(has("ready", self.job), STARTUP_TIMEOUT_S, "setup", job_failed(self.job))

    def _remote(self, ckpt: Checkpoint) -> dict[str, Any] | None:
        """What the ranks need to read MODEL_URI themselves (the per-rank objects too)."""
        if not self.cfg.model_uri:
            return None
        remote = self.source.remote(loaders.get(self.lib), ckpt)
        per_rank = [(e["name"], e["bytes"]) for e in ckpt.manifest["formats"][ckpt.format]["files"]
                    if e.get("tp_size") == self.world]
        return {"uri": remote.uri, "concurrency": remote.concurrency, "part_bytes": remote.part_bytes,
                "objects": [*remote.objects, *per_rank]}

    def trial(self, i: int) -> tuple[dict[str, Any], int]:
        assert self.pool is not None
        group = self.pool.group
        group.wait(has("trial", self.job, i), self.timeout, f"trial {i + 1}", job_failed(self.job))
        recs = sorted((x for k in range(self.local) for x in
                       next(r for r in group.records[k] if has("trial", self.job, i)([r]))["ranks"]),
                      key=lambda x: x["rank"])
        one = combine(recs, self.cfg.cache_mode, self.model_bytes, self.doc["ceilings"],
                      "s3" if self.cfg.model_uri else "local")
        one["library_info"] = dict(one.get("library_info") or {}, trial_timeout_s=self.timeout)
        one["io_mode"] = recs[0].get("io_mode")
        bad_input = one.pop("bad_input", False)
        return one, EXIT_OK if one["status"] == "ok" else (EXIT_BAD_INPUT if bad_input else EXIT_FAILED)

    def finish(self) -> None:
        assert self.pool is not None
        self.pool.group.wait(has("done", self.job), 60.0, "the end of the job", job_failed(self.job))

    def abort(self) -> str:
        if self.pool:
            self.pool.kill()  # out of step with the ranks: start afresh for the next variant
        return f"; the {self.world} ranks were stopped"

    def failed(self, doc: dict[str, Any], e: Exception, stage: str) -> int | None:
        if isinstance(e, BadInput):  # the ranks, if up, stay in step for the next variant
            return failure(doc, e, doc["label"], where(e))
        if not isinstance(e, RankFailed):
            return None
        if e.fatal and self.pool:
            self.pool.kill()
        at = self.stage if stage == "prepare" else stage
        doc["status"] = "error"
        doc["error"] = {"type": "RankFailed", "where": at, "message": str(e)}
        if e.error:
            doc["error"]["rank_error"] = e.error
        if at.startswith("trial"):
            failed = trial.new_trial(self.cfg.cache_mode)
            failed.update(status="error", finished_at=now(),
                          error={"type": "RankFailed", "message": str(e), "where": f"rank {e.rank}"})
            doc["trials"].append(failed)
        log(f"{doc['label']}: {e}")
        return EXIT_BAD_INPUT if e.bad_input else EXIT_FAILED


def combine(recs: Records, mode: str, model_bytes: int, measured: dict[str, Any] | None,
            source: str = "local") -> dict[str, Any]:
    """One trial of the pod from its ranks' records: the pod's time is the slowest rank's."""
    one = trial.new_trial(mode)
    first = recs[0]
    starts = [r["started_at"] for r in recs if r.get("started_at")]
    ends = [r["finished_at"] for r in recs if r.get("finished_at")]
    one.update(ranks=[{k: r.get(k) for k in RANK_KEYS} for r in recs],
               index_in_process=max((r.get("index_in_process") or 0) for r in recs),
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

    def total(key: str) -> int | None:
        values = [r[key] for r in recs if r.get(key) is not None]
        return sum(values) if values else None

    slowest = max(r["barrier_s"] for r in recs)
    skeleton = max((r["skeleton_s"] for r in recs if r.get("skeleton_s") is not None), default=None)
    device_peaks = [r["peak_device_bytes"] for r in recs if r.get("peak_device_bytes") is not None]
    rss = [r["peak_rss_bytes"] for r in recs if r.get("peak_rss_bytes") is not None]
    mismatches = [dict(m, rank=r["rank"], problem=f"rank {r['rank']}: {m['problem']}")
                  for r in recs for m in r.get("mismatches") or []]
    one.update(total_s=slowest, skeleton_s=skeleton, weights_s=slowest - (skeleton or 0.0),
               gbps=model_bytes / slowest / 1e9, verify_s=max(r.get("verify_s") or 0.0 for r in recs),
               peak_rss_bytes=sum(rss) if rss else None,
               peak_rss_method=f"sum over {len(recs)} ranks: {first.get('peak_rss_method')}",
               peak_device_bytes=max(device_peaks) if device_peaks else None,
               storage_read_bytes=total("storage_read_bytes"), cache_read_bytes=total("cache_read_bytes"),
               device_copy_bytes=total("bytes"),
               tensors_verified=sum(r.get("tensors_verified") or 0 for r in recs), mismatches=mismatches)
    # Only the read is a limit the ranks share; a host-to-device copy ceiling is per GPU.
    read = ceilings.limits_for(one["resident_before"] or 0.0, source)[0]
    trial.grade(one, read, ((measured or {}).get(read) or {}).get("gbps"))
    if mismatches:
        one["status"] = "mismatch"
    return one
