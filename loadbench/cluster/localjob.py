"""Run the Job manifests on this machine, as Kubernetes would run their pods.

For each completion index: the container's command, with the manifest's env,
JOB_COMPLETION_INDEX, stand-ins for the Downward API, and every PVC mapped to
a local folder (mount paths in env values rewritten). Parallelism is honoured
and exit codes go through the Job's podFailurePolicy, backoffLimitPerIndex
and maxFailedIndexes. This is how the tests prove that the manifests' commands,
env names and paths match the code.

    python -m loadbench.localjob benchmark-job.yaml --pvc loadbench-nvme=./pvc \\
        --set DEVICE=cpu --completions 2
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

APP_DIR = Path(__file__).resolve().parent.parent  # the image's /app
IMAGE_APP = "/app"


class ManifestError(ValueError):
    """A manifest this runner cannot map onto the machine."""


@dataclass
class JobResult:
    name: str
    status: str  # Complete | Failed
    reason: str = ""
    exit_codes: dict[int, list[int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "Complete"


def load_jobs(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return [d for d in docs if d.get("kind") == "Job"]


def _field_value(path: str, job: str, index: int, attempt: int) -> str:
    pod = f"{job}-{index}-{uuid.uuid4().hex[:5]}"
    values = {"metadata.name": pod, "metadata.uid": str(uuid.uuid4()),
              "spec.nodeName": socket.gethostname(), "metadata.namespace": "local",
              "metadata.labels['job-name']": job,
              "metadata.annotations['batch.kubernetes.io/job-completion-index']": str(index)}
    if path not in values:
        raise ManifestError(f"Downward API field {path!r} has no local stand-in")
    return values[path]


def _mounts(spec: dict[str, Any], container: dict[str, Any], pvcs: dict[str, str]
            ) -> list[tuple[str, str]]:
    """(mount path in the container, local folder) for every PVC mount."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    out = []
    for m in container.get("volumeMounts", []):
        vol = volumes.get(m["name"])
        if vol is None:
            raise ManifestError(f"volumeMount {m['name']!r} names no volume")
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if claim is None:
            continue  # emptyDir and the like: nothing to map
        if claim not in pvcs:
            raise ManifestError(f"PVC {claim!r} is not mapped: pass --pvc {claim}=DIR")
        local = os.path.join(pvcs[claim], m.get("subPath", ""))
        os.makedirs(local, exist_ok=True)
        out.append((m["mountPath"].rstrip("/"), local))
    return sorted(out, key=lambda o: -len(o[0]))


def _rewrite(value: str, mounts: list[tuple[str, str]]) -> str:
    for mount, local in mounts:
        if value == mount or value.startswith(mount + "/"):
            return local + value[len(mount):]
    if value == IMAGE_APP or value.startswith(IMAGE_APP + "/"):
        return str(APP_DIR) + value[len(IMAGE_APP):]
    return value


def pod_command(job: dict[str, Any], index: int, attempt: int, pvcs: dict[str, str],
                overrides: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment the pod of `index` would run with."""
    name = job["metadata"]["name"]
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    mounts = _mounts(spec, container, pvcs)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": str(APP_DIR), "PYTHONUNBUFFERED": "1"}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _rewrite(str(e["value"]), mounts)
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = _field_value(e["valueFrom"]["fieldRef"]["fieldPath"], name, index, attempt)
        else:
            raise ManifestError(f"env {e['name']!r}: only value and fieldRef are supported")
    if job["spec"].get("completionMode") == "Indexed":
        env["JOB_COMPLETION_INDEX"] = str(index)
    env.update({k: _rewrite(v, mounts) for k, v in overrides.items()})
    command = [_rewrite(c, mounts) for c in container["command"] + container.get("args", [])]
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command, env


def _matches(rule: dict[str, Any], container: str, code: int) -> bool:
    on = rule.get("onExitCodes")
    if not on or on.get("containerName", container) != container:
        return False
    hit = code in on["values"]
    return hit if on["operator"] == "In" else (not hit and code != 0)


def run_job(job: dict[str, Any], pvcs: dict[str, str], overrides: dict[str, str] | None = None,
            completions: int | None = None, log=print) -> JobResult:
    """Run every index to completion or failure under the Job's rules."""
    spec = job["spec"]
    name = job["metadata"]["name"]
    container = spec["template"]["spec"]["containers"][0]["name"]
    total = spec.get("completions", 1)
    if completions is not None:
        total = min(total, completions)
    per_index = spec.get("backoffLimitPerIndex", spec.get("backoffLimit", 6))
    max_failed = spec.get("maxFailedIndexes")
    rules = (spec.get("podFailurePolicy") or {}).get("rules", [])
    result = JobResult(name, "Complete")
    failed_indexes: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def run_index(index: int) -> None:
        for attempt in range(per_index + 1):
            if stop.is_set():
                return
            command, env = pod_command(job, index, attempt, pvcs, overrides or {})
            proc = subprocess.run(command, env=env, cwd=str(APP_DIR), capture_output=True, text=True)
            with lock:
                result.exit_codes.setdefault(index, []).append(proc.returncode)
            log(f"{name} index {index} attempt {attempt}: exit {proc.returncode}")
            if proc.returncode == 0:
                return
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["(no output)"]
            action = next((r["action"] for r in rules if _matches(r, container, proc.returncode)),
                          "Count")
            if action == "FailJob":
                with lock:
                    result.status = "Failed"
                    result.reason = (f"PodFailurePolicy: index {index} exited {proc.returncode}: "
                                     f"{tail[0]}")
                stop.set()
                return
            if action == "FailIndex":
                break
        with lock:
            failed_indexes.append(index)
            if max_failed is not None and len(failed_indexes) > max_failed:
                result.status, result.reason = "Failed", "MaxFailedIndexesExceeded"
                stop.set()

    with ThreadPoolExecutor(max_workers=max(1, spec.get("parallelism", 1))) as pool:
        list(pool.map(run_index, range(total)))
    if result.status == "Complete" and failed_indexes:
        result.status = "Failed"
        result.reason = f"indexes {sorted(failed_indexes)} failed"
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadbench.localjob", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest")
    ap.add_argument("--pvc", action="append", default=[], metavar="CLAIM=DIR",
                    help="map a PersistentVolumeClaim to a local folder")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a container env var (e.g. DEVICE=cpu)")
    ap.add_argument("--completions", type=int, help="run at most this many indexes")
    ap.add_argument("--job", help="run only the Job of this name")
    args = ap.parse_args(argv)
    try:
        pvcs = dict(p.split("=", 1) for p in args.pvc)
        overrides = dict(s.split("=", 1) for s in args.set)
    except ValueError:
        print("localjob: --pvc and --set take NAME=VALUE", file=sys.stderr)
        return 2
    jobs = [j for j in load_jobs(args.manifest) if not args.job or j["metadata"]["name"] == args.job]
    if not jobs:
        print(f"localjob: no Job{' named ' + args.job if args.job else ''} in {args.manifest}",
              file=sys.stderr)
        return 2
    code = 0
    for job in jobs:
        try:
            res = run_job(job, pvcs, overrides, args.completions,
                          log=lambda m: print(f"localjob: {m}", file=sys.stderr, flush=True))
        except ManifestError as e:
            print(f"localjob: {job['metadata']['name']}: {e}", file=sys.stderr)
            return 2
        print(f"job/{res.name}: {res.status}{' (' + res.reason + ')' if res.reason else ''}")
        code = code or (0 if res.ok else 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
