"""Collecting result documents from a cluster with the official kubernetes client.

Two ways, as the design says:
- from the PVC, through a short-lived helper pod that mounts it read-only and
  prints every document to its log (created, waited for, read, and always
  deleted, also on Ctrl-C or a timeout);
- from the benchmark pods' own logs (`LOADBENCH_RESULT` lines), while the
  pods still exist.
Documents that fail validation are skipped and reported; a local file is
never overwritten with different content.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from loadbench.schema import result as results
from loadbench.storage.files import write_json_atomic
from loadbench.cluster.dump import PREFIX as FILE_PREFIX


class CollectError(RuntimeError):
    """Collection could not proceed; the message says what to check."""


@dataclass
class Report:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.written)} written, {len(self.unchanged)} already present, "
                f"{len(self.conflicts)} conflicting (kept local), {len(self.invalid)} invalid")


def client_api(kubeconfig: str | None = None, context: str | None = None) -> tuple[Any, str]:
    """(CoreV1Api, default namespace) from the in-cluster service account or a kubeconfig.

    The namespace is the kubeconfig context's, or the pod's own in-cluster,
    as kubectl would use.
    """
    from kubernetes import client, config
    if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                namespace = f.read().strip() or "default"
        except OSError:
            namespace = "default"
        return client.CoreV1Api(), namespace
    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except config.ConfigException as e:
        raise CollectError(f"no usable kubeconfig ({e}); pass --kubeconfig or set KUBECONFIG") from e
    if context:
        contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
        active = next((c for c in contexts if c["name"] == context), active)
    namespace = (active or {}).get("context", {}).get("namespace") or "default"
    return client.CoreV1Api(), namespace


def store(doc: Any, rel: str, dest: str, report: Report) -> None:
    """Validate and write one document under dest/rel, never clobbering a different file."""
    problems = results.problems(doc)
    if problems:
        report.invalid.append((rel, "; ".join(problems)))
        return
    path = os.path.join(dest, rel)
    if os.path.exists(path):
        try:
            with open(path) as f:
                same = json.load(f) == doc
        except (OSError, ValueError):
            same = False
        (report.unchanged if same else report.conflicts).append(path)
        return
    write_json_atomic(path, doc)
    report.written.append(path)


def _selector_matches(selector: str | None, labels: dict[str, str] | None) -> bool:
    """Equality-based selectors (a=b,c!=d), checked again on the client side."""
    if not selector:
        return True
    labels = labels or {}
    for term in selector.split(","):
        m = re.fullmatch(r"\s*([^!=\s]+)\s*(!=|==|=)\s*(\S*)\s*", term)
        if not m:
            continue  # set-based terms are left to the API server
        key, op, value = m.groups()
        if (labels.get(key) == value) != (op != "!="):
            return False
    return True


def from_logs(api: Any, namespace: str, selector: str, dest: str,
              progress: Callable[[str], None] = print) -> Report:
    """LOADBENCH_RESULT lines from every pod that matches the selector."""
    report = Report()
    pods = [p for p in api.list_namespaced_pod(namespace, label_selector=selector).items
            if _selector_matches(selector, p.metadata.labels)]
    if not pods:
        raise CollectError(f"no pods match {selector!r} in namespace {namespace!r} (finished "
                           "Jobs delete theirs after ttlSecondsAfterFinished: collect from the PVC)")
    for i, pod in enumerate(pods, start=1):
        name = pod.metadata.name
        text = api.read_namespaced_pod_log(name=name, namespace=namespace)
        n = 0
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.startswith(results.LOG_PREFIX):
                continue
            n += 1
            where = f"pod {name} log line {lineno}"
            try:
                doc = json.loads(line[len(results.LOG_PREFIX):])
            except ValueError as e:
                report.invalid.append((where, f"not valid JSON: {e}"))
                continue
            label = doc.get("label", "unknown") if isinstance(doc, dict) else "unknown"
            uid = (pod.metadata.uid or "")[:8]
            rel = os.path.join(str(doc.get("run_id", "unknown")) if isinstance(doc, dict) else "unknown",
                               str(label), f"{name}-{uid}-{n}.json")
            store(doc, rel, dest, report)
        progress(f"[{i}/{len(pods)}] {name}: {n} result line(s)")
    return report


def helper_pod(name: str, claim: str, image: str, results_path: str, sub_path: str) -> dict[str, Any]:
    """A restricted, read-only pod that prints the documents under results_path."""
    mount = "/mnt/pvc"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "loadbench",
                                              "app.kubernetes.io/component": "collect"}},
        "spec": {
            "restartPolicy": "Never", "automountServiceAccountToken": False,
            "activeDeadlineSeconds": 900,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "collect", "image": image,
                "command": ["python", "-m", "loadbench.cluster.dump", f"{mount}/{results_path}".rstrip("/")],
                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "pvc", "mountPath": mount, "readOnly": True,
                                  **({"subPath": sub_path} if sub_path else {})}],
            }],
            "volumes": [{"name": "pvc", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
        },
    }


def _waiting_reason(pod: Any) -> str:
    statuses = (pod.status.container_statuses or []) if pod.status else []
    for s in statuses:
        if s.state and s.state.waiting:
            return f"{s.state.waiting.reason}: {s.state.waiting.message or ''}".strip(": ")
    return (pod.status.reason or "") if pod.status else ""


def _parse_files(text: str, dest: str, report: Report, prefix: str) -> None:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.startswith(FILE_PREFIX):
            continue
        try:
            record = json.loads(line[len(FILE_PREFIX):])
        except ValueError as e:
            report.invalid.append((f"helper log line {lineno}", f"not valid JSON: {e}"))
            continue
        if "error" in record:
            report.invalid.append((record.get("path", "?"), record["error"]))
            continue
        rel = os.path.normpath(os.path.join(prefix, record["path"]))
        if rel.startswith(".."):
            report.invalid.append((record["path"], "path leaves the destination folder"))
            continue
        store(record["doc"], rel, dest, report)


def from_pvc(api: Any, namespace: str, claim: str, image: str, dest: str, results_path: str = "",
             sub_path: str = "results", timeout: float = 300.0, poll: float = 1.0,
             progress: Callable[[str], None] = print) -> Report:
    """Create the helper pod, wait until it has printed everything, read, delete."""
    name = f"loadbench-collect-{uuid.uuid4().hex[:6]}"
    api.create_namespaced_pod(namespace, helper_pod(name, claim, image, results_path, sub_path))
    progress(f"created pod/{name} mounting pvc/{claim} read-only")
    try:
        deadline = time.monotonic() + timeout
        phase = None
        while True:
            pod = api.read_namespaced_pod(name=name, namespace=namespace)
            phase = pod.status.phase if pod.status else None
            if phase == "Succeeded":
                break
            if phase == "Failed":
                log = api.read_namespaced_pod_log(name=name, namespace=namespace)
                raise CollectError(f"helper pod {name} failed: {_waiting_reason(pod)} "
                                   f"{log.strip().splitlines()[-1:] or ''}")
            if time.monotonic() > deadline:
                raise CollectError(
                    f"helper pod {name} did not finish within {timeout:g} s (phase {phase or 'unknown'}"
                    f"{', ' + _waiting_reason(pod) if _waiting_reason(pod) else ''}); check "
                    f"`kubectl -n {namespace} describe pod {name}`: image pull, PVC {claim!r} "
                    f"bound and mountable on a node? It has been deleted.")
            progress(f"waiting for pod/{name}: {phase or 'unknown'}")
            time.sleep(poll)
        text = api.read_namespaced_pod_log(name=name, namespace=namespace)
        report = Report()
        _parse_files(text, dest, report, results_path)
        return report
    finally:  # also on Ctrl-C: never leave the helper behind
        try:
            api.delete_namespaced_pod(name=name, namespace=namespace, grace_period_seconds=0)
            progress(f"deleted pod/{name}")
        except Exception as e:  # already gone, or the API is unreachable: say so
            if getattr(e, "status", None) != 404:
                progress(f"could not delete pod/{name}: {e}; delete it by hand")


def iter_lines(report: Report) -> Iterable[str]:
    for where, why in report.invalid:
        yield f"skipped {where}: {why}"
    for path in report.conflicts:
        yield f"kept local {path}: the cluster's copy differs"
