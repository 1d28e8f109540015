"""One pod's command, environment and working directory, as the kubelet would give them.

The same script must see the same environment locally as in the pod, so
every source is applied in the kubelet's order: the ConfigMaps of `envFrom`,
`env` values (with `$(VAR)` references), Downward API stand-ins,
JOB_COMPLETION_INDEX for Indexed Jobs, then `--set`. Mount paths and /app
are rewritten to local folders, so paths in values land where they would in
the pod; the workingDir is a scratch folder with the volumes linked in, so
relative paths (the derived MODEL_PATH, the default RES_PATH) land on the
volume too, and what does not is known to be lost with the pod.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from loadbench.cluster.manifests import ConfigMap, ManifestError
from loadbench.config import settings as cfg

APP_DIR = Path(__file__).resolve().parents[2]  # the image's /app
IMAGE_APP = "/app"
# What a pod inherits from this machine: the image's environment, not your shell's settings.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES",
                "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION")
REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
LABEL_FIELD = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")

Mounts = list[tuple[str, str]]  # (mount path in the container, local folder), longest first


@dataclass(frozen=True)
class PodMeta:
    """What the Downward API can tell a pod about itself."""
    name: str
    uid: str
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(frozen=True)
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


def _field_value(path: str, pod: PodMeta) -> str:
    m = LABEL_FIELD.fullmatch(path)
    if m:
        values = pod.labels if m.group(1) == "labels" else pod.annotations
        if m.group(2) not in values:
            raise ManifestError(f"Downward API {path}: the pod has no such {m.group(1)[:-1]}")
        return str(values[m.group(2)])
    plain = {"metadata.name": pod.name, "metadata.uid": pod.uid, "metadata.namespace": "local",
             "spec.nodeName": socket.gethostname(), "spec.serviceAccountName": "default",
             "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1"}
    if path not in plain:
        raise ManifestError(f"Downward API field {path!r} has no local stand-in")
    return plain[path]


def _mounts(spec: dict[str, Any], container: dict[str, Any], pvcs: Mapping[str, str]) -> Mounts:
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


def _rewrite(value: str, mounts: Mounts) -> str:
    for mount, local in mounts:
        if value == mount or value.startswith(mount + "/"):
            return local + value[len(mount):]
    if value == IMAGE_APP or value.startswith(IMAGE_APP + "/"):
        return str(APP_DIR) + value[len(IMAGE_APP):]
    return value


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) references in command, args and env values; $$ escapes."""
    return REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def gpus_requested(container: dict[str, Any]) -> int:
    res = container.get("resources") or {}
    return int((res.get("limits") or {}).get("nvidia.com/gpu")
               or (res.get("requests") or {}).get("nvidia.com/gpu") or 0)


def derived_paths(env: Mapping[str, str]) -> tuple[str, str]:
    """MODEL_PATH and RES_PATH/RUN_ID as the benchmark will resolve them, also when unset, so
    the runner can say where a pod wrote. A value the settings refuse is taken as written:
    the pod itself reports that error."""
    def read(name: str) -> str:
        try:
            value = cfg.BY_NAME[name].read(env)
        except ValueError:
            value = env.get(name)
        return "" if value is None else str(value)

    model, run_id = cfg.default_paths(read("MODEL_ID"), read("MODEL_PATH") or None, read("RUN_ID") or None,
                                  read("CACHE_MODE") or None)
    return model, os.path.join(read("RES_PATH") or "results", run_id)


def _pod_meta(job: dict[str, Any], index: int) -> PodMeta:
    job_name = job["metadata"]["name"]
    template_meta = job["spec"]["template"].get("metadata") or {}
    labels = {**template_meta.get("labels", {}), "job-name": job_name,
              "batch.kubernetes.io/job-name": job_name}
    annotations = dict(template_meta.get("annotations", {}))
    if job["spec"].get("completionMode") == "Indexed":
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
    return PodMeta(f"{job_name}-{index}-{uuid.uuid4().hex[:5]}", str(uuid.uuid4()), labels, annotations)


def pod_spec(job: dict[str, Any], index: int, attempt: int, pvcs: Mapping[str, str],
             overrides: Mapping[str, str] | None = None,
             configmaps: Mapping[str, ConfigMap] | None = None,
             rendezvous: Mapping[str, str] | None = None) -> PodSpec:
    """The command, environment and working directory the pod of `index` runs with.
    Creates its scratch working directory: call `cleanup(spec)` when it ends."""
    job_name = job["metadata"]["name"]
    spec = job["spec"]["template"]["spec"]
    containers = spec["containers"]
    if len(containers) != 1:
        raise ManifestError(f"job {job_name}: one container per pod is supported, not {len(containers)}")
    (container,) = containers
    pod = _pod_meta(job, index)
    mounts = _mounts(spec, container, pvcs)
    workdir = (container.get("workingDir") or "").rstrip("/")
    scratch = tempfile.mkdtemp(prefix=f"localjob-{pod.name}-")
    try:
        for mount, local in mounts:  # the pod's view of its working directory: volumes linked in
            if workdir and mount.startswith(workdir + "/"):
                link = os.path.join(scratch, mount[len(workdir) + 1:])
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(local, link)
        if workdir:
            mounts = mounts + [(workdir, scratch)]
        env, sources = _environment(job, index, pod, container, mounts, overrides or {},
                                    configmaps or {}, rendezvous or {})
        command = [_rewrite(_expand(c, env), mounts)
                   for c in container.get("command", []) + container.get("args", [])]
        if not command:
            raise ManifestError(f"job {job_name}: the container has no command (the image's default "
                                "cannot be known here)")
        if command[0] in ("python", "python3"):
            command[0] = sys.executable
        model, results = derived_paths(env)
        model_dir, results_dir = (os.path.realpath(os.path.join(scratch, p)) for p in (model, results))
        on_volume = {p: any(p == local or p.startswith(local + os.sep) for _, local in mounts
                            if local != scratch) for p in (model_dir, results_dir)}
        return PodSpec(pod.name, command, env, scratch, scratch, model_dir, results_dir, on_volume,
                       gpus_requested(container), sources)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _environment(job: dict[str, Any], index: int, pod: PodMeta, container: dict[str, Any],
                 mounts: Mounts, overrides: Mapping[str, str], configmaps: Mapping[str, ConfigMap],
                 rendezvous: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(the container's environment, where its ConfigMaps came from), in the kubelet's order."""
    indexed = job["spec"].get("completionMode") == "Indexed"
    env = {k: os.environ[k] for k in PASS_THROUGH if k in os.environ}
    # An Indexed Job's pod is named <job>-<index>-<random> but its host name is <job>-<index>.
    hostname = f"{job['metadata']['name']}-{index}" if indexed else pod.name
    env.update({"PYTHONPATH": str(APP_DIR), "PYTHONUNBUFFERED": "1", "HOSTNAME": hostname})
    sources = []
    for ref in container.get("envFrom", []):
        if "secretRef" in ref:  # credentials (s3-credentials-secret.yaml): never read from a manifest
            if ref["secretRef"].get("optional"):
                sources.append(f"Secret {ref['secretRef'].get('name')} skipped (optional; a local run "
                               f"takes AWS_* from its own environment)")
                continue
            raise ManifestError(f"envFrom {ref}: a required Secret cannot be served locally; mark it "
                                f"optional: true and export its variables (AWS_*) instead")
        if "configMapRef" not in ref:
            raise ManifestError(f"envFrom {ref}: only configMapRef and optional secretRef are supported")
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
            key_ref = src["configMapKeyRef"]
            found = configmaps.get(key_ref["name"])
            if found is None or key_ref["key"] not in found.data:
                if key_ref.get("optional"):
                    continue
                raise ManifestError(f"env {e['name']!r}: ConfigMap {key_ref['name']!r} key "
                                    f"{key_ref['key']!r} not found")
            env[e["name"]] = found.data[key_ref["key"]]
        else:
            raise ManifestError(f"env {e['name']!r}: only value, fieldRef and configMapKeyRef are "
                                "supported")
    if indexed:
        env["JOB_COMPLETION_INDEX"] = str(index)
    env.update(overrides)
    subdomain = job["spec"]["template"]["spec"].get("subdomain")
    host = re.compile(rf"[a-z0-9]([-a-z0-9]*[a-z0-9])?\.{re.escape(subdomain)}(\.[-a-z0-9.]+)?"
                      ) if subdomain else None
    for k, v in list(env.items()):
        if host is not None and host.fullmatch(v):
            env[k] = "127.0.0.1"  # a pod of the headless Service: here, this machine
        else:
            env[k] = _rewrite(v, mounts)
    env.update(rendezvous)
    return env, sources


def pod_command(job: dict[str, Any], index: int, attempt: int, pvcs: Mapping[str, str],
                overrides: Mapping[str, str] | None = None,
                configmaps: Mapping[str, ConfigMap] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command and environment the pod of `index` would run with (no scratch left behind)."""
    spec = pod_spec(job, index, attempt, pvcs, overrides, configmaps)
    cleanup(spec)
    return spec.command, spec.env


def cleanup(spec: PodSpec) -> None:
    shutil.rmtree(spec.scratch, ignore_errors=True)  # links only: the volumes stay
