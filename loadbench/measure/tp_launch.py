"""Starting and watching the rank processes of a tensor-parallel pod.

The pod process starts N ranks the way torchrun would: subprocesses with
RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT,
the rest of the environment (NCCL_* included) as it is. A job is handed over
as FOLDER/job-<k>.json (a `TPJob`); ranks append one JSON line per event to
FOLDER/rank-<r>.jsonl (up, ready, trial, done, error), and the launcher reads
those, never a rank's stdout. A rank that crashes or hangs cannot hang the
pod: waits have deadlines, and a crash or a deadline stops every rank
(SIGTERM, then SIGKILL, by process group: each rank leads its own).

Across pods (benchmark-tp-multinode.yaml) a pod whose environment has
WORLD_SIZE>1 is ONE rank of a group of WORLD_SIZE pods (`Multinode`).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from typing import Any, Callable, Mapping

from loadbench.errors import ConfigError
from loadbench.storage.files import write_json_atomic

STARTUP_TIMEOUT_S = 600.0     # imports, process group, CUDA context; a job's checkpoint checks
STOP_GRACE_S = 5.0
POLL_S = 0.02
RANK_PROGRAM = [sys.executable, "-m", "loadbench.measure.tp_rank"]

Records = list[dict[str, Any]]


@dataclass(frozen=True)
class TPJob:
    """One library variant handed to the ranks: what each rank loads, reads and verifies."""
    library: str
    label: str
    options: dict[str, Any]
    model_path: str
    format: str
    model_id: str
    dtype: str
    cache_mode: str
    num_trials: int
    cache_files: list[str]
    rank_files: list[str] | None = None
    # MODEL_URI read by the ranks themselves (the library's load_tp_s3): the format folder's URI,
    # the client's requests in flight and range size, its weight objects [(name, bytes), ...].
    # Never credentials: each rank's client takes them from the pod's environment.
    remote: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TPJob:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def has(kind: str, job: int | None = None, index: int | None = None) -> Callable[[Records], bool]:
    """A wait condition: some record of this kind (for this job and trial) has arrived."""
    return lambda recs: any(r.get("kind") == kind and (job is None or r.get("job") == job)
                            and (index is None or r.get("index") == index) for r in recs)


def job_failed(job: int) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("kind") == "error" and (r.get("job") == job or r.get("fatal", True))


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


class RankPool:
    """The pod's N ranks: started by the first TP variant, given one job per variant."""

    def __init__(self, world: int, device_type: str, timeout_s: float,
                 command: list[str] | None = None, multi: Multinode | None = None) -> None:
        self.folder = tempfile.mkdtemp(prefix="loadbench-tp-")
        write_json_atomic(os.path.join(self.folder, "pool.json"),
                          {"device": device_type, "timeout_s": timeout_s, "parent_pid": os.getpid(),
                           "multinode": multi is not None})
        program = command or RANK_PROGRAM
        self.group = RankGroup(world, self.folder, [*program, self.folder], multi=multi)
        self.jobs = 0
        self.closed = False

    def start(self) -> None:
        self.group.start()
        self.group.wait(has("up"), STARTUP_TIMEOUT_S, "rank startup")

    def submit(self, job: TPJob) -> int:
        k = self.jobs
        write_json_atomic(os.path.join(self.folder, f"job-{k}.json"), job.to_json())
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
