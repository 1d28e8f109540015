"""Run a Job's pods as local processes, under its rules, as the Job controller would.

Pods run `parallelism` at a time. With a GPU pool each gets its own
CUDA_VISIBLE_DEVICES for the nvidia.com/gpu it asks for, as the device
plugin would, and waits (Pending) while none is free: two pods on one GPU
would measure each other. Exit codes go through the Job's `JobPolicy`; a
failed Job stops its running pods, and Ctrl-C sends them SIGTERM and waits
up to terminationGracePeriodSeconds, as the kubelet does, so no pod outlives
the runner.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Mapping

from loadbench.cluster.manifests import ConfigMap, ManifestError
from loadbench.cluster.podspec import cleanup, pod_spec
from loadbench.cluster.policy import MAX_IGNORED, JobPolicy
from loadbench.errors import EXIT_OK
from loadbench.schema.result import LOG_PREFIX

Log = Callable[[str], None]


@dataclass
class PodRun:
    """One pod attempt, filled in while it runs."""
    name: str
    index: int
    attempt: int
    exit_code: int | None = None  # None: stopped before it started
    started: float = 0.0
    finished: float = 0.0
    gpus: str | None = None
    last_line: str = ""
    lines: list[str] = field(default_factory=list)


@dataclass
class JobResult:
    name: str
    status: str  # Complete | Failed
    reason: str = ""
    exit_codes: dict[int, list[int]] = field(default_factory=dict)
    pods: list[PodRun] = field(default_factory=list)
    model_dirs: set[str] = field(default_factory=set)
    results_dirs: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)  # paths that were not on a volume
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "Complete"


class GPUPool:
    """The node's GPUs, handed out per pod as the device plugin does."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = list(ids)
        self.free = list(ids)
        self.cv = threading.Condition()

    def take(self, n: int, stop: threading.Event) -> list[str] | None:
        """n GPUs, waiting while fewer are free; None once `stop` is set (the Job ended)."""
        if n > len(self.ids):
            raise ManifestError(f"a pod asks for {n} nvidia.com/gpu, --gpus gives {len(self.ids)}")
        with self.cv:
            while len(self.free) < n:  # Pending until a GPU is free
                if stop.is_set():
                    return None
                self.cv.wait(0.2)
            got, self.free = self.free[:n], self.free[n:]
            return got

    def give(self, ids: list[str]) -> None:
        with self.cv:
            self.free.extend(ids)
            self.free.sort(key=self.ids.index)
            self.cv.notify_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shown(line: str, full: bool) -> str:
    """A result line shortened to what it says: whole documents would bury the pod's log."""
    if full or not line.startswith(LOG_PREFIX):
        return line
    try:
        doc = json.loads(line[len(LOG_PREFIX):])
        what = f"{doc.get('label') or doc.get('library')} {doc.get('status')}"
    except (ValueError, AttributeError):
        what = "not JSON"
    return f"{LOG_PREFIX}{{...}} {what}, {len(line)} bytes (--full-logs shows it)"


def printer(stream: IO[str] | None = None) -> Log:
    """A print that keeps the lines of concurrent pods whole."""
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            print(line, file=stream or sys.stdout, flush=True)

    return out


class _JobRun:
    """The state one Job's pod threads share, behind one lock."""

    def __init__(self, job: dict[str, Any], policy: JobPolicy, pvcs: Mapping[str, str],
                 overrides: Mapping[str, str] | None, configmaps: Mapping[str, ConfigMap] | None,
                 pool: GPUPool | None, rendezvous: Mapping[str, str], log: Log, output: Log,
                 full_logs: bool) -> None:
        self.job, self.policy, self.pvcs, self.overrides = job, policy, pvcs, overrides
        self.configmaps, self.pool, self.rendezvous = configmaps, pool, rendezvous
        self.log, self.output, self.full_logs = log, output, full_logs
        self.result = JobResult(policy.name, "Complete")
        self.failed_indexes: list[int] = []
        self.failures = 0  # Job-wide, when backoff is not per index
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.running: dict[str, subprocess.Popen[str]] = {}
        self.said: set[str] = set()
        self.started = time.monotonic()

    def run_pod(self, index: int, attempt: int) -> PodRun:
        name = self.policy.name
        ps = pod_spec(self.job, index, attempt, self.pvcs, self.overrides, self.configmaps,
                      self.rendezvous)
        run = PodRun(ps.name, index, attempt)
        ids: list[str] | None = []
        env = ps.env
        try:
            with self.lock:
                for line in ps.sources:
                    if line not in self.said:
                        self.said.add(line)
                        self.log(f"job/{name}: {line}")
                self.result.model_dirs.add(ps.model_dir)
                self.result.results_dirs.add(ps.results_dir)
            if self.pool is not None and ps.gpus:
                ids = self.pool.take(ps.gpus, self.stop)
                if ids is None:
                    return run
                run.gpus = ",".join(ids)
                env = {**ps.env, "CUDA_VISIBLE_DEVICES": run.gpus}
            if self.stop.is_set():
                return run
            prefix = f"[pod/{ps.name}/{self.policy.container}] "
            gpu_note = f" on GPU {run.gpus}" if run.gpus is not None else ""
            self.log(f"pod/{ps.name}: index {index} attempt {attempt} started{gpu_note}")
            run.started = time.time()
            proc = subprocess.Popen(ps.command, env=env, cwd=ps.cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                    start_new_session=True)
            with self.lock:
                self.running[ps.name] = proc
            if self.stop.is_set():  # the Job failed while this pod was starting
                os.killpg(proc.pid, signal.SIGTERM)
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                run.lines.append(line)
                if line.strip() and not line.startswith(LOG_PREFIX):
                    run.last_line = line.strip()
                self.output(prefix + shown(line, self.full_logs))
            code = proc.wait()
            run.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as the kubelet says
            run.finished = time.time()
            with self.lock:
                self.running.pop(ps.name, None)
            self.log(f"pod/{ps.name}: exit {run.exit_code} after {run.finished - run.started:.1f} s")
            return run
        finally:
            if self.pool is not None and ids:
                self.pool.give(ids)
            with self.lock:  # written where no volume keeps it: lost with the pod
                self.result.lost.update(p for p, ok in ps.on_volume.items()
                                        if not ok and os.path.exists(p))
            cleanup(ps)

    def fail(self, reason: str) -> None:
        """The Job failed: no new pods, and the running ones are stopped, as the controller does."""
        with self.lock:
            if self.result.status != "Complete":
                return
            self.result.status, self.result.reason = "Failed", reason
            busy = bool(self.running)
        self.stop.set()
        if busy:
            self.log(f"job/{self.policy.name}: failed ({reason}); SIGTERM to the pods still running")
            threading.Thread(target=self.terminate, daemon=True).start()

    def run_index(self, index: int) -> None:
        policy = self.policy
        attempt = ignored = 0
        while not self.stop.is_set():
            run = self.run_pod(index, attempt + ignored)
            if run.exit_code is None:
                return  # stopped before it started
            with self.lock:
                self.result.pods.append(run)
                self.result.exit_codes.setdefault(index, []).append(run.exit_code)
            code = run.exit_code
            if code == EXIT_OK or self.stop.is_set():
                return
            action = policy.action(code)
            if action == "FailJob":
                self.fail(f"PodFailurePolicy: index {index} exited {code}: {run.last_line or '(no output)'}")
                return
            if action == "Ignore" and ignored < MAX_IGNORED:
                ignored += 1
                continue
            if action == "FailIndex":
                break
            if policy.backoff_per_index is None:
                with self.lock:
                    self.failures += 1
                    over = policy.too_many_failures(self.failures)
                if over:
                    self.fail("BackoffLimitExceeded")
                    return
            elif policy.index_exhausted(attempt):
                break
            attempt += 1
        if self.stop.is_set():
            return
        with self.lock:
            self.failed_indexes.append(index)
            over = policy.too_many_failed_indexes(len(self.failed_indexes))
        if over:
            self.fail("MaxFailedIndexesExceeded")

    def guarded(self, index: int) -> None:
        try:
            self.run_index(index)
        except BaseException:
            self.stop.set()
            raise

    def terminate(self) -> None:
        with self.lock:
            procs = list(self.running.values())
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.policy.grace_s
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def run(self) -> JobResult:
        policy = self.policy
        executor = ThreadPoolExecutor(max_workers=policy.parallelism)
        try:
            futures = [executor.submit(self.guarded, i) for i in range(policy.completions)]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                for f in done:
                    f.result()  # a ManifestError from any pod stops the Job here
                if policy.deadline_s and time.monotonic() - self.started > policy.deadline_s:
                    self.fail(f"DeadlineExceeded: activeDeadlineSeconds {policy.deadline_s}")
        except KeyboardInterrupt:
            self.stop.set()
            self.log(f"job/{policy.name}: interrupted: SIGTERM to the running pods "
                     f"(grace {policy.grace_s:.0f} s)")
            self.terminate()
            raise
        except BaseException:
            self.stop.set()
            self.terminate()
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            self.result.seconds = time.monotonic() - self.started
        if self.result.status == "Complete" and self.failed_indexes:
            self.result.status = "Failed"
            self.result.reason = f"indexes {sorted(self.failed_indexes)} failed"
        return self.result


def run_job(job: dict[str, Any], pvcs: Mapping[str, str], overrides: Mapping[str, str] | None = None,
            completions: int | None = None, log: Log | None = None,
            configmaps: Mapping[str, ConfigMap] | None = None, gpus: list[str] | None = None,
            parallelism: int | None = None, output: Log | None = None,
            full_logs: bool = False) -> JobResult:
    """Run every index to completion or failure under the Job's rules.

    `log` gets localjob's own lines, `output` each pod line with its prefix
    (default: stderr and stdout). Ctrl-C (KeyboardInterrupt) terminates the pods
    with their grace period and is raised again."""
    say: Log = log or (lambda m: print(f"localjob: {m}", file=sys.stderr, flush=True))
    policy = JobPolicy.of(job, completions, parallelism)
    pod = job["spec"]["template"]["spec"]
    rendezvous: dict[str, str] = {}
    if pod.get("subdomain"):  # a headless Service: its pods find each other on this machine
        env0 = {e["name"] for e in pod["containers"][0].get("env", [])}
        if "MASTER_PORT" in env0 or "MASTER_PORT" in (overrides or {}):
            rendezvous["MASTER_PORT"] = str(free_port())
            say(f"job/{policy.name}: headless Service {pod['subdomain']!r}: pod host names are "
                f"127.0.0.1, MASTER_PORT={rendezvous['MASTER_PORT']} (a free local port)")
    pool = GPUPool(gpus) if gpus is not None else None
    return _JobRun(job, policy, pvcs, overrides, configmaps, pool, rendezvous, say,
                   output or printer(), full_logs).run()
