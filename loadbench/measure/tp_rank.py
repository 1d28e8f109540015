"""One rank of a tensor-parallel pod: `python -m loadbench.measure.tp_rank FOLDER`.

Started by measure/tp_launch.py, once per pod; it runs one job per library
variant (imports, CUDA context and process group are not paid per library).
Per trial of a job:

    the pod's first rank brings the page cache into the asked state and measures it
    barrier; every rank measures the residency of the files it reads
    barrier -> clock starts on every rank
    each rank loads ONLY its slices (the library's `load_tp`), synchronizes
    barrier -> clock stops
    each rank verifies its slices against the manifest's per-slice checksums

A job's setup is agreed by all ranks (an all-reduce) before its trials, so a
setup error on one rank is an error document while the ranks stay in step for
the next job. Across pods, the ranks all-gather their records after each
trial, so every pod builds the same document. Ranks die with the parent
(PR_SET_PDEATHSIG) and leave when it exits (FOLDER/stop).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from typing import Any

import torch

from loadbench import loaders, machine, models
from loadbench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput, CheckpointError, one_line
from loadbench.loaders.context import LoadContext, Remote
from loadbench.measure import trial
from loadbench.measure.document import error_info, now, where
from loadbench.measure.tp_launch import POLL_S, TPJob
from loadbench.measure.tp_plan import RankPlan
from loadbench.storage import cache
from loadbench.storage.checkpoint import open_checkpoint

log = trial.log


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


class RankWorker:
    """One rank: its device and process group for the pod, a checkpoint and plan per job."""

    def __init__(self, pool: dict[str, Any]) -> None:
        import torch.distributed as dist
        self.dist = dist
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local = int(os.environ.get("LOCAL_RANK", self.rank))
        self.pods = bool(pool.get("multinode"))  # one rank per pod, the group across pods
        self.who = {"node": os.environ.get("NODE_NAME") or socket.gethostname(),
                    "pod": os.environ.get("POD_NAME") or None}
        self.loads = 0  # this process's loads so far: a trial's index_in_process
        cuda = pool["device"] == "cuda"
        self.device = torch.device("cuda", self.local) if cuda else torch.device("cpu")
        machine.init_device(self.device)
        dist.init_process_group("nccl" if cuda else "gloo", rank=self.rank, world_size=self.world,
                                timeout=timedelta(seconds=pool["timeout_s"] + 60),
                                **({"device_id": self.device} if cuda else {}))  # type: ignore[arg-type]
        self.barrier()
        self.peers = self.gather(dict(self.who, rank=self.rank))

    def gather(self, obj: dict[str, Any]) -> list[dict[str, Any]]:
        """Across pods, every rank's `obj` (each pod builds the same document); else this rank's."""
        if not self.pods:
            return [obj]
        got: list[Any] = [None] * self.world
        self.dist.all_gather_object(got, obj)
        return got

    def setup(self, job: TPJob) -> None:
        self.mod = loaders.require(job.library)
        self.remote = remote_for(job.remote)
        self.ckpt = open_checkpoint(job.model_path, job.format, job.model_id, job.dtype,
                                    files=self.remote is None)
        self.plan = RankPlan.from_manifest(self.ckpt.manifest, self.rank, self.world)
        self.dtype = models.DTYPES[job.dtype]
        self.options = job.options
        self.files = job.cache_files
        self.own = [job.rank_files[self.rank]] if job.rank_files else self.files
        for path in self.own:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path} is missing; run save_models.py again")
        # Import the architecture's modeling code untimed, as a TP_SIZE=1 run does.
        models.skeleton(LoadContext(self.ckpt, self.device, self.dtype, self.options).config, self.dtype)
        gc.freeze()  # what the imports made is permanent: no collection walks it inside a load

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
        trial.release(self.device, collect=bool(self.loads))
        rec: dict[str, Any] = {"rank": self.rank, "device": str(self.device), "status": "ok",
                               "mismatches": [], "tensors_verified": 0, "warnings": [],
                               "index_in_process": self.loads, **self.who}
        self.loads += 1
        if self.local == 0:  # the pod's first rank, for its node's page cache
            rec["resident_all"] = trial.prepare_cache(mode, self.files, rec) if self.files else 0.0
        self.barrier()
        rec["resident_before"] = cache.residency(self.own) if self.own else 0.0  # from the bucket: none
        ctx = LoadContext(self.ckpt, self.device, self.dtype, self.options, remote=self.remote)
        self.barrier()
        load = trial.TimedLoad(ctx).run(self.mod.load_tp_s3 if self.remote else self.mod.load_tp,
                                        self.rank, self.world, self.plan)
        self.barrier()  # the clock of the pod stops when the slowest rank has loaded
        rec.update(io_mode=ctx.io_mode, library_info=ctx.info, started_at=load.started_at,
                   barrier_s=time.perf_counter() - load.start)
        if load.failure is not None:
            rec.update(status="error", error=error_info(load.failure, where(load.failure)),
                       bad_input=isinstance(load.failure, BadInput), finished_at=now())
            log(f"rank {self.rank}: load failed: {one_line(load.failure)}")
            return rec
        rec.update(load.times())
        try:
            state = {k: (v.to_local() if hasattr(v, "to_local") else v)  # transformers' DTensors
                     for k, v in models.state(load.model).items()}
            rec["bytes"] = sum(v.numel() * v.element_size() for v in state.values())
            rec["gbps"] = rec["bytes"] / rec["total_s"] / 1e9 if rec["total_s"] > 0 else None
            trial.verify_into(rec, state, self.plan.expected, self.device, f"rank {self.rank}: ")
            del state
        except Exception as e:
            rec.update(status="error", error=error_info(e, where(e)))
        rec["finished_at"] = now()
        del load
        return rec

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.barrier()
            self.dist.destroy_process_group()


def remote_for(spec: dict[str, Any] | None) -> Remote | None:
    """The job's object-storage folder, with this rank's own client (credentials from the pod's
    environment, as the pod's client has them)."""
    if not spec:
        return None
    from loadbench.storage import objectstore
    remote = Remote(uri=spec["uri"], client=objectstore.client(concurrency=spec["concurrency"]),
                    endpoint_url=objectstore.endpoint_from_env(), concurrency=spec["concurrency"],
                    part_bytes=spec["part_bytes"], objects=tuple((n, b) for n, b in spec["objects"]))
    if remote.objects:  # credentials found and a connection made now, not inside the first load
        first = objectstore.parse_uri(remote.object(remote.objects[0][0]))
        remote.client.head_object(Bucket=first.bucket, Key=first.prefix)
    return remote


def next_job(folder: str, k: int) -> TPJob | None:
    """Job k when the parent hands it over; None when the pod is done."""
    path, stop = os.path.join(folder, f"job-{k}.json"), os.path.join(folder, "stop")
    while True:
        if os.path.exists(path):
            with open(path) as f:
                return TPJob.from_json(json.load(f))
        if os.path.exists(stop) or not os.path.isdir(folder):
            return None
        time.sleep(POLL_S)


def worker_main(argv: list[str]) -> int:
    """`python -m loadbench.measure.tp_rank FOLDER`: one rank, from startup to the pod's last job."""
    folder = argv[0]
    with open(os.path.join(folder, "pool.json")) as f:
        pool = json.load(f)
    _die_with_parent(pool.get("parent_pid"))
    rank = int(os.environ["RANK"])
    out = RecordFile(os.path.join(folder, f"rank-{os.environ.get('LOCAL_RANK', rank)}.jsonl"))
    try:
        me = RankWorker(pool)
        out.write(kind="up", rank=rank, device=str(me.device), pid=os.getpid(), peers=me.peers)
    except BaseException as e:
        error = error_info(e, where(e))
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
        stage = "setup"
        try:
            problem = None
            try:
                me.setup(job)
            except Exception as e:
                problem = e
            mine = None if problem is None else {
                "rank": rank, "error": error_info(problem, where(problem)),
                "bad_input": isinstance(problem, BadInput)}
            if problem is not None:
                log(f"rank {rank}: setup of {job.library} failed: {one_line(problem)}")
            if me.pods:  # every pod must run the same variant, and learns what failed where
                seen = me.gather({"label": job.label, "problem": mine})
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
            for i in range(job.num_trials):
                stage = f"trial {i + 1}"
                out.write(kind="trial", job=k, index=i, ranks=me.gather(me.trial(job.cache_mode)))
            out.write(kind="done", job=k, rank=rank)
        except BaseException as e:  # outside a load (cache, a barrier): the pod stops the ranks
            out.write(kind="error", job=k, where=stage, rank=rank, error=error_info(e, where(e)),
                      bad_input=isinstance(e, BadInput), fatal=True)
            log(f"rank {rank}: {stage} failed: {one_line(e)}")
            return EXIT_FAILED
        k += 1
    me.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
