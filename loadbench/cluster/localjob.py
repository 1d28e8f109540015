"""Run Job manifests on this machine, as Kubernetes would run their pods.

Each pod is a local process running the container's command with the env the
kubelet would give it: the ConfigMaps of `envFrom` (from the manifests given,
from `--env-file`, or generated from the env file that kustomization.yaml
beside the manifest names), `env` values, Downward API stand-ins (pod name,
uid, node, namespace, labels and annotations), JOB_COMPLETION_INDEX for
Indexed Jobs, then `--set`. Every PersistentVolumeClaim is a local folder
(`--pvc CLAIM=DIR`, honouring subPath); the pod's workingDir is a scratch
folder with the mounts under it linked in, so relative paths (the derived
MODEL_PATH, the default RES_PATH) land where they would in the pod. Mount
paths in env values and /app in the command are rewritten to local paths.

Pods run `parallelism` at a time; with `--gpus N` each gets its own
CUDA_VISIBLE_DEVICES for the nvidia.com/gpu it asks for, as the device
plugin would, and waits (Pending) while none is free. For a headless Service
rendezvous (pod `subdomain`), host names `<job>-<i>.<subdomain>` become
127.0.0.1 and MASTER_PORT a free local port. Exit codes go through the Job's
podFailurePolicy, backoffLimitPerIndex (or backoffLimit), maxFailedIndexes and
activeDeadlineSeconds; a failed Job stops its running pods. Ctrl-C sends them
SIGTERM and waits up to terminationGracePeriodSeconds, as the kubelet does.

Output: each pod's lines as they come, prefixed as `kubectl logs --prefix`
shows them (LOADBENCH_RESULT lines shortened unless --full-logs), then per
Job its status, the model and results folders, and a summary table of the
results (plot_results.py --no-plots).

    python -m loadbench.localjob save-models-job.yaml --pvc loadbench-nvme=./pvc \\
        --set DEVICE=cpu --set MODEL_ID=random/opt-tiny
    python -m loadbench.localjob benchmark-matrix-job.yaml --pvc loadbench-nvme=./pvc \\
        --set DEVICE=cpu --set MODEL_ID=random/opt-tiny --completions 4 \\
        --set LIBRARIES=tensorizer,safetensors,huggingface,huggingface-bin

Exit codes: 0 every Job completed; 1 a Job failed; 2 a manifest or argument
this runner cannot use; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

APP_DIR = Path(__file__).resolve().parents[2]  # the image's /app
IMAGE_APP = "/app"
RESULT_PREFIX = "LOADBENCH_RESULT "
KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# What a pod inherits from this machine: the image's environment, not your shell's settings.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
                "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
ENV_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class ManifestError(ValueError):
    """A manifest or argument this runner cannot map onto the machine."""


@dataclass
class ConfigMap:
    name: str
    data: dict[str, str]
    source: str  # where it came from, for the log


@dataclass
class PodRun:
    name: str
    index: int
    attempt: int
    exit_code: int | None = None
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


# ---------------------------------------------------------------- manifests and ConfigMaps

def _documents(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ManifestError(f"{path} is not YAML: {e}") from None


def load_jobs(path: str) -> list[dict[str, Any]]:
    return [d for d in _documents(path) if d.get("kind") == "Job"]


def read_env_file(path: str) -> dict[str, str]:
    """NAME=VALUE lines as kubectl and kustomize read them (`--from-env-file`, `env:`):
    leading blanks dropped, blank and # lines skipped, the value taken literally
    (no quotes removed). A bare NAME (value from your shell) is refused: an
    experiment must not depend on the shell it was started from."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n").rstrip("\r").lstrip()
            if not line or line.startswith("#"):
                continue
            name, eq, value = line.partition("=")
            if not eq:
                raise ValueError(f"{path}:{n}: {line!r} has no '=': write NAME=VALUE (kubectl would "
                                 "take the value from your shell)")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{path}:{n}: {name!r} is not an environment variable name")
            out[name] = value
    return out


def kustomization(folder: str) -> tuple[str, dict[str, Any]] | None:
    for name in KUSTOMIZATIONS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path) as f:
                return path, yaml.safe_load(f) or {}
    return None


def generated_configmaps(folder: str) -> dict[str, ConfigMap]:
    """The ConfigMaps a kustomization's configMapGenerator makes (env, envs, literals)."""
    found = kustomization(folder)
    if not found:
        return {}
    path, kust = found
    out: dict[str, ConfigMap] = {}
    for gen in kust.get("configMapGenerator") or []:
        data: dict[str, str] = {}
        files = ([gen["env"]] if gen.get("env") else []) + list(gen.get("envs") or [])
        for env_file in files:
            data.update(read_env_file(os.path.join(folder, env_file)))
        for literal in gen.get("literals") or []:
            k, _, v = str(literal).partition("=")
            data[k] = v
        source = ", ".join(files) or "literals"
        out[gen["name"]] = ConfigMap(gen["name"], data, f"{source} ({os.path.basename(path)})")
    return out


def render_configmap(folder: str, name: str = "loadbench-experiment") -> str:
    """The committed ConfigMap manifest for plain `kubectl apply -f`: exactly what
    kustomization.yaml's generator makes from its env file, in file order."""
    found = kustomization(folder)
    gen = next((g for g in (found[1].get("configMapGenerator") or []) if g.get("name") == name),
               None) if found else None
    if gen is None:
        raise ManifestError(f"no configMapGenerator named {name!r} in {folder}/kustomization.yaml")
    cm = generated_configmaps(folder)[name]
    options = found[1].get("generatorOptions") or {}
    env_file = cm.source.split(" (")[0]
    meta: dict[str, Any] = {"name": name}
    for key in ("labels", "annotations"):
        if options.get(key):
            meta[key] = dict(options[key])
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": cm.data}
    head = (f"# GENERATED from {env_file}: edit {env_file}, then run\n"
            f"#   python -m loadbench.localjob --render-configmap > experiment-configmap.yaml\n"
            f"# (a test checks that the two agree). For plain `kubectl apply -f`, with any Job manifest:\n"
            f"#   kubectl apply -f experiment-configmap.yaml -f benchmark-matrix-job.yaml\n"
            f"# `kubectl apply -k .` generates the same ConfigMap from {env_file} itself.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000)


def configmaps_for(manifests: Iterable[str], env_files: Iterable[str] = ()) -> dict[str, ConfigMap]:
    """Every ConfigMap a pod of these manifests may name, by precedence: generated by a
    kustomization.yaml beside a manifest, then ConfigMap documents in the manifests,
    then --env-file [NAME=]FILE (a FILE without NAME serves every envFrom ConfigMap)."""
    out: dict[str, ConfigMap] = {}
    paths = list(manifests)
    for folder in dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in paths):
        out.update(generated_configmaps(folder))
    for path in paths:
        for d in _documents(path):
            if d.get("kind") == "ConfigMap":
                name = d["metadata"]["name"]
                out[name] = ConfigMap(name, {k: str(v) for k, v in (d.get("data") or {}).items()},
                                      os.path.basename(path))
    for spec in env_files:
        name, eq, path = spec.partition("=")
        if not eq or os.path.exists(spec) or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
            name, path = "*", spec
        try:
            out[name] = ConfigMap(name, read_env_file(path), f"{path} (--env-file)")
        except OSError as e:
            raise ManifestError(f"--env-file {spec}: {e.strerror}") from None
        except ValueError as e:
            raise ManifestError(str(e)) from None
    return out


# ---------------------------------------------------------------- one pod

@dataclass
class PodSpec:
    """Everything one pod attempt runs with."""
    name: str
    command: list[str]
    env: dict[str, str]
    cwd: str
    scratch: str          # the pod's working directory: removed when the pod ends
    model_dir: str        # where MODEL_PATH and RES_PATH/RUN_ID resolve, following links
    results_dir: str
    on_volume: dict[str, bool]
    gpus: int
    sources: list[str]


def _field_value(path: str, pod: dict[str, Any]) -> str:
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        values = pod[m.group(1)]
        if m.group(2) not in values:
            raise ManifestError(f"Downward API {path}: the pod has no such {m.group(1)[:-1]}")
        return str(values[m.group(2)])
    plain = {"metadata.name": pod["name"], "metadata.uid": pod["uid"], "metadata.namespace": "local",
             "spec.nodeName": socket.gethostname(), "spec.serviceAccountName": "default",
             "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    if path not in plain:
        raise ManifestError(f"Downward API field {path!r} has no local stand-in")
    return plain[path]


def _mounts(spec: dict[str, Any], container: dict[str, Any], pvcs: dict[str, str]
            ) -> list[tuple[str, str]]:
    """(mount path in the container, local folder) for every PVC mount, longest first."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = []
    for m in container.get("volumeMounts", []):
        vol = volumes.get(m["name"])
        if vol is None:
            raise ManifestError(f"volumeMount {m['name']!r} names no volume")
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is None:
            continue  # emptyDir and the like: the pod's own, nothing to keep
        if claim not in pvcs:
            raise ManifestError(f"PVC {claim!r} is not mapped: pass --pvc {claim}=DIR")
        local = os.path.abspath(os.path.join(pvcs[claim], m.get("subPath", "")))
        os.makedirs(local, exist_ok=True)
        out.append((m["mountPath"].rstrip("/") or "/", local))
    return sorted(out, key=lambda o: -len(o[0]))


def _rewrite(value: str, mounts: list[tuple[str, str]]) -> str:
    for mount, local in mounts:
        if value == mount or value.startswith(mount + "/"):
            return local + value[len(mount):]
    if value == IMAGE_APP or value.startswith(IMAGE_APP + "/"):
        return str(APP_DIR) + value[len(IMAGE_APP):]
    return value


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) references in command, args and env values; $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _gpus_requested(container: dict[str, Any]) -> int:
    res = container.get("resources") or {}
    return int((res.get("limits") or {}).get("nvidia.com/gpu")
               or (res.get("requests") or {}).get("nvidia.com/gpu") or 0)


def _derived_paths(env: dict[str, str]) -> tuple[str, str]:
    """MODEL_PATH and RES_PATH/RUN_ID as the settings resolve them (also when they are unset)."""
    from loadbench.config import settings as cfg

    def read(name: str) -> str:
        try:
            value = cfg.BY_NAME[name].read(env)
        except ValueError:
            value = env.get(name)
        return "" if value is None else str(value)

    slug = cfg.model_slug(read("MODEL_ID"))
    model = read("MODEL_PATH") or os.path.join("loadbench-data", "models", slug)
    run_id = read("RUN_ID") or f"{slug}-{read('CACHE_MODE') or 'cold'}"
    return model, os.path.join(read("RES_PATH") or "results", run_id)


def pod_spec(job: dict[str, Any], index: int, attempt: int, pvcs: dict[str, str],
             overrides: dict[str, str] | None = None,
             configmaps: dict[str, ConfigMap] | None = None,
             rendezvous: dict[str, str] | None = None) -> PodSpec:
    """The command, environment and working directory the pod of `index` runs with.
    Creates its scratch working directory: call `cleanup(spec)` when it ends."""
    job_name = job["metadata"]["name"]
    template = job["spec"]["template"]
    spec = template["spec"]
    containers = spec["containers"]
    if len(containers) != 1:
        raise ManifestError(f"job {job_name}: one container per pod is supported, not {len(containers)}")
    (container,) = containers
    configmaps = configmaps or {}
    pod = {"name": f"{job_name}-{index}-{uuid.uuid4().hex[:5]}", "uid": str(uuid.uuid4())}
    indexed = job["spec"].get("completionMode") == "Indexed"
    pod["labels"] = {**(template.get("metadata") or {}).get("labels", {}), "job-name": job_name,
                     "batch.kubernetes.io/job-name": job_name}
    pod["annotations"] = dict((template.get("metadata") or {}).get("annotations", {}))
    if indexed:
        pod["labels"]["batch.kubernetes.io/job-completion-index"] = str(index)
        pod["annotations"]["batch.kubernetes.io/job-completion-index"] = str(index)
    mounts = _mounts(spec, container, pvcs)
    workdir = (container.get("workingDir") or "").rstrip("/")
    scratch = tempfile.mkdtemp(prefix=f"localjob-{pod['name']}-")
    try:
        return _pod_spec(job, index, pod, container, mounts, workdir, scratch, overrides or {},
                         configmaps, rendezvous or {})
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _pod_spec(job: dict[str, Any], index: int, pod: dict[str, Any], container: dict[str, Any],
              mounts: list[tuple[str, str]], workdir: str, scratch: str, overrides: dict[str, str],
              configmaps: dict[str, ConfigMap], rendezvous: dict[str, str]) -> PodSpec:
    job_name = job["metadata"]["name"]
    spec = job["spec"]["template"]["spec"]
    indexed = job["spec"].get("completionMode") == "Indexed"
    for mount, local in mounts:  # the pod's view of its working directory: volumes linked in
        if workdir and mount.startswith(workdir + "/"):
            link = os.path.join(scratch, mount[len(workdir) + 1:])
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(local, link)
    if workdir:
        mounts = mounts + [(workdir, scratch)]

    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    # An Indexed Job's pod is named <job>-<index>-<random> but its host name is <job>-<index>.
    hostname = f"{job_name}-{index}" if indexed else pod["name"]
    env.update({"PYTHONPATH": str(APP_DIR), "PYTHONUNBUFFERED": "1", "HOSTNAME": hostname})
    sources = []
    for ref in container.get("envFrom", []):
        if "configMapRef" not in ref:
            raise ManifestError(f"envFrom {ref}: only configMapRef is supported")
        cm_name = ref["configMapRef"]["name"]
        cm, anyone = configmaps.get(cm_name), configmaps.get("*")
        if anyone and (cm is None or "--env-file" not in cm.source):
            cm = anyone  # --env-file FILE serves every envFrom ConfigMap not named otherwise
        if cm is None:
            if ref["configMapRef"].get("optional"):
                continue
            raise ManifestError(f"ConfigMap {cm_name!r} (envFrom) not found: pass it among the manifests "
                                f"or --env-file {cm_name}=FILE")
        sources.append(f"ConfigMap {cm_name} from {cm.source}")
        env.update({ref.get("prefix", "") + k: v for k, v in cm.data.items()})
    for e in container.get("env", []):
        src = e.get("valueFrom") or {}
        if "value" in e or not src:
            env[e["name"]] = _expand(str(e.get("value", "")), env)
        elif "fieldRef" in src:
            env[e["name"]] = _field_value(src["fieldRef"]["fieldPath"], pod)
        elif "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            cm = configmaps.get(ref["name"])
            if cm is None or ref["key"] not in cm.data:
                if ref.get("optional"):
                    continue
                raise ManifestError(f"env {e['name']!r}: ConfigMap {ref['name']!r} key {ref['key']!r} "
                                    "not found")
            env[e["name"]] = cm.data[ref["key"]]
        else:
            raise ManifestError(f"env {e['name']!r}: only value, fieldRef and configMapKeyRef are "
                                "supported")
    if indexed:
        env["JOB_COMPLETION_INDEX"] = str(index)
    env.update(overrides)
    subdomain = spec.get("subdomain")
    host = re.compile(rf"[a-z0-9]([-a-z0-9]*[a-z0-9])?\.{re.escape(subdomain)}(\.[-a-z0-9.]+)?"
                      ) if subdomain else None
    for k, v in list(env.items()):
        if host is not None and host.fullmatch(v):
            env[k] = "127.0.0.1"  # a pod of the headless Service: here, this machine
        else:
            env[k] = _rewrite(v, mounts)
    env.update(rendezvous)

    command = [_rewrite(_expand(c, env), mounts)
               for c in container.get("command", []) + container.get("args", [])]
    if not command:
        raise ManifestError(f"job {job_name}: the container has no command (the image's default "
                            "cannot be known here)")
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    model, results = _derived_paths(env)
    model_dir, results_dir = (os.path.realpath(os.path.join(scratch, p)) for p in (model, results))
    on_volume = {p: any(p == local or p.startswith(local + os.sep) for _, local in mounts
                        if local != scratch) for p in (model_dir, results_dir)}
    return PodSpec(pod["name"], command, env, scratch, scratch, model_dir, results_dir, on_volume,
                   _gpus_requested(container), sources)


def pod_command(job: dict[str, Any], index: int, attempt: int, pvcs: dict[str, str],
                overrides: dict[str, str] | None = None,
                configmaps: dict[str, ConfigMap] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment the pod of `index` would run with (no scratch left behind)."""
    spec = pod_spec(job, index, attempt, pvcs, overrides, configmaps)
    cleanup(spec)
    return spec.command, spec.env


def cleanup(spec: PodSpec) -> None:
    shutil.rmtree(spec.scratch, ignore_errors=True)  # links only: the volumes stay


# ---------------------------------------------------------------- a Job

def _matches(rule: dict[str, Any], container: str, code: int) -> bool:
    on = rule.get("onExitCodes")
    if not on or on.get("containerName", container) != container:
        return False
    hit = code in on["values"]
    return hit if on["operator"] == "In" else (not hit and code != 0)


def failure_action(rules: list[dict[str, Any]], container: str, code: int) -> str:
    """What the Job's podFailurePolicy does with a pod that exited `code`: the first
    matching rule's action, else Count (a local process has no pod conditions)."""
    return next((r["action"] for r in rules if _matches(r, container, code)), "Count")


class GPUPool:
    """The node's GPUs, handed out per pod as the device plugin does."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = list(ids)
        self.free = list(ids)
        self.cv = threading.Condition()

    def take(self, n: int, stop: threading.Event) -> list[str] | None:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shown(line: str, full: bool) -> str:
    if full or not line.startswith(RESULT_PREFIX):
        return line
    try:
        doc = json.loads(line[len(RESULT_PREFIX):])
        what = f"{doc.get('label') or doc.get('library')} {doc.get('status')}"
    except (ValueError, AttributeError):
        what = "not JSON"
    return f"{RESULT_PREFIX}{{...}} {what}, {len(line)} bytes (--full-logs shows it)"


def _printer(stream=None) -> Callable[[str], None]:
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            print(line, file=stream or sys.stdout, flush=True)

    return out


def run_job(job: dict[str, Any], pvcs: dict[str, str], overrides: dict[str, str] | None = None,
            completions: int | None = None, log: Callable[[str], None] | None = None,
            configmaps: dict[str, ConfigMap] | None = None, gpus: list[str] | None = None,
            parallelism: int | None = None, output: Callable[[str], None] | None = None,
            full_logs: bool = False) -> JobResult:
    """Run every index to completion or failure under the Job's rules.

    `log` gets localjob's own lines, `output` each pod line with its prefix
    (default: stderr and stdout). Ctrl-C (KeyboardInterrupt) terminates the pods
    with their grace period and is raised again."""
    log = log or (lambda m: print(f"localjob: {m}", file=sys.stderr, flush=True))
    output = output or _printer()
    spec = job["spec"]
    name = job["metadata"]["name"]
    pod_spec_ = spec["template"]["spec"]
    container = pod_spec_["containers"][0]["name"]
    grace = float(pod_spec_.get("terminationGracePeriodSeconds", 30))
    total = spec.get("completions", 1)
    if completions is not None:
        total = min(total, completions)
    width = max(1, parallelism or spec.get("parallelism", 1))
    indexed = spec.get("completionMode") == "Indexed"
    per_index = spec.get("backoffLimitPerIndex") if indexed else None
    budget = spec.get("backoffLimit", 6)  # Job-wide failures, when not per index
    max_failed = spec.get("maxFailedIndexes")
    rules = (spec.get("podFailurePolicy") or {}).get("rules", [])
    deadline_s = spec.get("activeDeadlineSeconds")
    pool = GPUPool(gpus) if gpus is not None else None
    rendezvous: dict[str, str] = {}
    if pod_spec_.get("subdomain"):
        env0 = {e["name"] for e in pod_spec_["containers"][0].get("env", [])}
        if "MASTER_PORT" in env0 or "MASTER_PORT" in (overrides or {}):
            rendezvous["MASTER_PORT"] = str(_free_port())
            log(f"job/{name}: headless Service {pod_spec_['subdomain']!r}: pod host names are "
                f"127.0.0.1, MASTER_PORT={rendezvous['MASTER_PORT']} (a free local port)")
    result = JobResult(name, "Complete")
    failed_indexes: list[int] = []
    failures = [0]
    stop = threading.Event()
    lock = threading.Lock()
    running: dict[str, subprocess.Popen] = {}
    started = time.monotonic()
    said: set[str] = set()

    def run_pod(index: int, attempt: int) -> PodRun:
        ps = pod_spec(job, index, attempt, pvcs, overrides, configmaps, rendezvous)
        run = PodRun(ps.name, index, attempt)
        ids: list[str] | None = []
        try:
            with lock:
                for line in ps.sources:
                    if line not in said:
                        said.add(line)
                        log(f"job/{name}: {line}")
                result.model_dirs.add(ps.model_dir)
                result.results_dirs.add(ps.results_dir)
            if pool is not None and ps.gpus:
                ids = pool.take(ps.gpus, stop)
                if ids is None:
                    run.exit_code = None
                    return run
                ps.env["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
                run.gpus = ps.env["CUDA_VISIBLE_DEVICES"]
            if stop.is_set():
                return run
            prefix = f"[pod/{ps.name}/{container}] "
            gpu_note = f" on GPU {run.gpus}" if run.gpus is not None else ""
            log(f"pod/{ps.name}: index {index} attempt {attempt} started{gpu_note}")
            run.started = time.time()
            proc = subprocess.Popen(ps.command, env=ps.env, cwd=ps.cwd, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                    start_new_session=True)
            with lock:
                running[ps.name] = proc
            if stop.is_set():  # the Job failed while this pod was starting
                os.killpg(proc.pid, signal.SIGTERM)
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                run.lines.append(line)
                if line.strip() and not line.startswith(RESULT_PREFIX):
                    run.last_line = line.strip()
                output(prefix + _shown(line, full_logs))
            code = proc.wait()
            run.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as the kubelet says
            run.finished = time.time()
            with lock:
                running.pop(ps.name, None)
            log(f"pod/{ps.name}: exit {run.exit_code} after {run.finished - run.started:.1f} s")
            return run
        finally:
            if pool is not None and ids:
                pool.give(ids)
            with lock:  # written where no volume keeps it: lost with the pod
                result.lost.update(p for p, ok in ps.on_volume.items() if not ok and os.path.exists(p))
            cleanup(ps)

    def fail_job(reason: str) -> None:
        """The Job failed: no new pods, and the running ones are stopped, as the controller does."""
        with lock:
            if result.status != "Complete":
                return
            result.status, result.reason = "Failed", reason
            busy = bool(running)
        stop.set()
        if busy:
            log(f"job/{name}: failed ({reason}); SIGTERM to the pods still running")
            threading.Thread(target=terminate, daemon=True).start()

    def run_index(index: int) -> None:
        attempt = ignored = 0
        while not stop.is_set():
            run = run_pod(index, attempt + ignored)
            if run.exit_code is None:
                return  # stopped before it started
            with lock:
                result.pods.append(run)
                result.exit_codes.setdefault(index, []).append(run.exit_code)
            code = run.exit_code
            if code == 0 or stop.is_set():
                return
            action = failure_action(rules, container, code)
            if action == "FailJob":
                fail_job(f"PodFailurePolicy: index {index} exited {code}: {run.last_line or '(no output)'}")
                return
            if action == "Ignore" and ignored < 10:
                ignored += 1
                continue
            if action == "FailIndex":
                break
            if per_index is None:
                with lock:
                    failures[0] += 1
                    over = failures[0] > budget
                if over:
                    fail_job("BackoffLimitExceeded")
                    return
            elif attempt >= per_index:
                break
            attempt += 1
        if stop.is_set():
            return
        with lock:
            failed_indexes.append(index)
            over = max_failed is not None and len(failed_indexes) > max_failed
        if over:
            fail_job("MaxFailedIndexesExceeded")

    def guarded(index: int) -> None:
        try:
            run_index(index)
        except BaseException:
            stop.set()
            raise

    def terminate() -> None:
        with lock:
            procs = list(running.values())
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    executor = ThreadPoolExecutor(max_workers=width)
    try:
        futures = [executor.submit(guarded, i) for i in range(total)]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # a ManifestError from any pod stops the Job here
            if deadline_s and time.monotonic() - started > deadline_s:
                fail_job(f"DeadlineExceeded: activeDeadlineSeconds {deadline_s}")
    except KeyboardInterrupt:
        stop.set()
        log(f"job/{name}: interrupted: SIGTERM to the running pods (grace {grace:.0f} s)")
        terminate()
        raise
    except BaseException:
        stop.set()
        terminate()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        result.seconds = time.monotonic() - started
    if result.status == "Complete" and failed_indexes:
        result.status = "Failed"
        result.reason = f"indexes {sorted(failed_indexes)} failed"
    return result


# ---------------------------------------------------------------- the command line

def _shown_path(path: str) -> str:
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _documents_in(folder: str) -> list[str]:
    """Result documents under a RUN_ID folder (not its ceilings/ or other JSON files)."""
    out = []
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            if not f.endswith(".json") or f.startswith(".tmp-"):
                continue
            try:
                with open(path) as fh:
                    schema = json.load(fh).get("schema", "")
            except (OSError, ValueError, AttributeError):
                schema = "loadbench.result?"  # unreadable: shown, for plot_results to judge
            if str(schema).startswith("loadbench.result"):
                out.append(path)
    return out


def summary(results_dir: str, log: Callable[[str], None]) -> str:
    """The summary table of a results folder: plot_results.py --no-plots in its own process
    (tables only, written to a scratch folder); a plain listing if that fails."""
    with tempfile.TemporaryDirectory(prefix="localjob-report-") as out:
        proc = subprocess.run([sys.executable, str(APP_DIR / "plot_results.py"), results_dir,
                               "--no-plots", "--out", out],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(APP_DIR)})
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.rstrip()
    why = ([ln for ln in proc.stderr.splitlines() if ln.strip()] or ["no output"])[-1]
    log(f"plot_results.py did not summarise {_shown_path(results_dir)} ({why}); the documents:")
    rows = []
    for path in sorted(_documents_in(results_dir)):
        try:
            with open(path) as f:
                doc = json.load(f)
            rows.append(f"  {doc.get('label') or doc.get('library')}  {doc.get('status')}  "
                        f"{os.path.relpath(path, results_dir)}")
        except (OSError, ValueError) as e:
            rows.append(f"  (unreadable: {type(e).__name__})  {os.path.relpath(path, results_dir)}")
    return "\n".join(rows)


def _gpu_ids(text: str) -> list[str]:
    text = text.strip()
    if text.isdigit():
        return [str(i) for i in range(int(text))]
    ids = [p.strip() for p in text.split(",") if p.strip()]
    if not ids or not all(i.isdigit() for i in ids):
        raise argparse.ArgumentTypeError("--gpus takes a count (2) or device indexes (0,2)")
    return ids


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise ManifestError(f"{what} takes NAME=VALUE, not {item!r}")
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadbench.localjob", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifests", nargs="*", metavar="MANIFEST",
                    help="YAML files, as kubectl apply -f: their Jobs run in order, their ConfigMaps "
                         "serve envFrom")
    ap.add_argument("--pvc", action="append", default=[], metavar="CLAIM=DIR",
                    help="map a PersistentVolumeClaim to a local folder")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="set a container env var over everything else (e.g. DEVICE=cpu); derived "
                         "values (MODEL_PATH, RUN_ID) follow")
    ap.add_argument("--env-file", action="append", default=[], metavar="[CONFIGMAP=]FILE",
                    help="data of an envFrom ConfigMap (default: the env file kustomization.yaml "
                         "beside the manifest generates it from, e.g. experiment.env)")
    ap.add_argument("--completions", type=int, metavar="N", help="run at most this many indexes")
    ap.add_argument("--parallelism", type=int, metavar="N", help="pods at once (default: the Job's)")
    ap.add_argument("--gpus", type=_gpu_ids, metavar="N|I,J",
                    help="GPUs to hand out: each pod gets its own CUDA_VISIBLE_DEVICES")
    ap.add_argument("--job", help="run only the Job of this name")
    ap.add_argument("--full-logs", action="store_true", help="show LOADBENCH_RESULT lines whole")
    ap.add_argument("--no-summary", action="store_true", help="skip the summary table at the end")
    ap.add_argument("--render-configmap", nargs="?", const="loadbench-experiment", metavar="NAME",
                    help="print the ConfigMap kustomization.yaml generates (experiment-configmap.yaml)")
    args = ap.parse_args(argv)
    log = _printer(sys.stderr)

    def say(msg: str) -> None:
        log(f"localjob: {msg}")

    try:
        if args.render_configmap:
            folder = os.path.dirname(os.path.abspath(args.manifests[0])) if args.manifests else "."
            sys.stdout.write(render_configmap(folder, args.render_configmap))
            return 0
        if not args.manifests:
            ap.error("name at least one manifest")
        pvcs = _pairs(args.pvc, "--pvc")
        overrides = _pairs(args.set, "--set")
        configmaps = configmaps_for(args.manifests, args.env_file)
        jobs = [j for m in args.manifests for j in load_jobs(m)
                if not args.job or j["metadata"]["name"] == args.job]
    except ManifestError as e:
        say(str(e))
        return 2
    if not jobs:
        say(f"no Job{' named ' + args.job if args.job else ''} in {', '.join(args.manifests)}")
        return 2
    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM to localjob: stop the pods as Ctrl-C does, not orphan them

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _run_all(jobs, pvcs, overrides, configmaps, args, log, say)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        return _run_all(jobs, pvcs, overrides, configmaps, args, log, say)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_all(jobs: list[dict[str, Any]], pvcs: dict[str, str], overrides: dict[str, str],
             configmaps: dict[str, ConfigMap], args: argparse.Namespace,
             log: Callable[[str], None], say: Callable[[str], None]) -> int:
    code = 0
    summaries: list[str] = []
    for job in jobs:
        try:
            res = run_job(job, pvcs, overrides, args.completions, log=say, configmaps=configmaps,
                          gpus=args.gpus, parallelism=args.parallelism, full_logs=args.full_logs)
        except ManifestError as e:
            say(f"job/{job['metadata']['name']}: {e}")
            return 2
        except KeyboardInterrupt:
            say("interrupted")
            return 130
        pods = len(res.pods)
        log(f"job/{res.name}: {res.status}{' (' + res.reason + ')' if res.reason else ''}, "
            f"{pods} pod{'s' * (pods != 1)} in {res.seconds:.1f} s")
        for path in sorted(res.model_dirs):
            if os.path.exists(os.path.join(path, "manifest.json")):
                log(f"  model:   {_shown_path(path)}")
        for path in sorted(res.results_dirs):
            if os.path.isdir(path):
                n = len(_documents_in(path))
                log(f"  results: {_shown_path(path)} ({n} document{'s' * (n != 1)})")
                if path not in summaries and n:
                    summaries.append(path)
        for path in sorted(res.lost):
            say(f"  {_shown_path(path)} is not on a volume: gone with the pod, as in Kubernetes")
        code = code or (0 if res.ok else 1)
    if not args.no_summary:
        for path in summaries:
            print(f"\nsummary of {_shown_path(path)} (every document of this RUN_ID):\n"
                  f"{summary(path, say)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
