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

Exit codes (loadbench.errors): 0 every Job completed; 1 a Job failed; 2 a
manifest or argument this runner cannot use; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Mapping

from loadbench.cluster.manifests import (
    ConfigMap,
    ManifestError,
    configmaps_for,
    load_jobs,
    pairs,
    read_env_file,
    render_configmap,
)
from loadbench.cluster.podspec import PodSpec, cleanup, pod_command, pod_spec
from loadbench.cluster.policy import JobPolicy, failure_action
from loadbench.cluster.runner import GPUPool, JobResult, PodRun, printer, run_job
from loadbench.cluster.summary import job_lines, results_folders, shown_path, summary
from loadbench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, exit_code

# The runner's parts, importable from here as before the split (tests, loadbench.localjob).
__all__ = ["ConfigMap", "GPUPool", "JobPolicy", "JobResult", "ManifestError", "PodRun", "PodSpec",
           "cleanup", "configmaps_for", "failure_action", "load_jobs", "main", "pod_command", "pod_spec",
           "read_env_file", "render_configmap", "run_job"]


def _gpu_ids(text: str) -> list[str]:
    text = text.strip()
    if text.isdigit():
        return [str(i) for i in range(int(text))]
    ids = [p.strip() for p in text.split(",") if p.strip()]
    if not ids or not all(i.isdigit() for i in ids):
        raise argparse.ArgumentTypeError("--gpus takes a count (2) or device indexes (0,2)")
    return ids


def _parser() -> argparse.ArgumentParser:
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
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    log = printer(sys.stderr)

    def say(msg: str) -> None:
        log(f"localjob: {msg}")

    try:
        if args.render_configmap:
            folder = os.path.dirname(os.path.abspath(args.manifests[0])) if args.manifests else "."
            sys.stdout.write(render_configmap(folder, args.render_configmap))
            return EXIT_OK
        if not args.manifests:
            ap.error("name at least one manifest")
        pvcs = pairs(args.pvc, "--pvc")
        overrides = pairs(args.set, "--set")
        configmaps = configmaps_for(args.manifests, args.env_file)
        jobs = [j for m in args.manifests for j in load_jobs(m)
                if not args.job or j["metadata"]["name"] == args.job]
    except ManifestError as e:
        say(str(e))
        return exit_code(e)
    if not jobs:
        say(f"no Job{' named ' + args.job if args.job else ''} in {', '.join(args.manifests)}")
        return EXIT_BAD_INPUT

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # SIGTERM to localjob: stop the pods as Ctrl-C does, not orphan them

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _run_all(jobs, pvcs, overrides, configmaps, args, log, say)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        return _run_all(jobs, pvcs, overrides, configmaps, args, log, say)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_all(jobs: list[dict[str, Any]], pvcs: Mapping[str, str], overrides: Mapping[str, str],
             configmaps: Mapping[str, ConfigMap], args: argparse.Namespace,
             log: Callable[[str], None], say: Callable[[str], None]) -> int:
    code = EXIT_OK
    summaries: list[str] = []
    for job in jobs:
        try:
            res = run_job(job, pvcs, overrides, args.completions, log=say, configmaps=configmaps,
                          gpus=args.gpus, parallelism=args.parallelism, full_logs=args.full_logs)
        except ManifestError as e:
            say(f"job/{job['metadata']['name']}: {e}")
            return exit_code(e)
        except KeyboardInterrupt as e:
            say("interrupted")
            return exit_code(e)
        folders = results_folders(res)
        for warning, line in job_lines(res, folders):
            (say if warning else log)(line)
        for path, n in folders:
            if n and path not in summaries:
                summaries.append(path)
        code = code or (EXIT_OK if res.ok else EXIT_FAILED)
    if not args.no_summary:
        for path in summaries:
            print(f"\nsummary of {shown_path(path)} (every document of this RUN_ID):\n"
                  f"{summary(path, say)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
