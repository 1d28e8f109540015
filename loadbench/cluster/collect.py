"""Collecting result documents from a cluster with the official kubernetes client.

Two ways, as the design says:
- from the PVC, through a short-lived helper pod that mounts it read-only and
  prints every document to its log (created, waited for, read, and always
  deleted, also on Ctrl-C or a timeout);
- from the benchmark pods' own logs (`LOADBENCH_RESULT` lines), while the
  pods still exist.

What pods print is untrusted (images and hub models are code you do not fully
control), so:
- no path derived from a document or a helper record leaves --out: folder
  names from a document's run_id and label are sanitized (and the renaming
  reported); a helper record's path must be relative, without '..', of plain
  names, or it is refused; folders and files are opened relative to --out
  without following symbolic links, so a link planted in --out cannot
  redirect a write;
- every log line and every pod is isolated: anything malformed (bad JSON,
  nesting that overflows the parser, a log that cannot be read) is reported
  and skipped, and collection goes on;
- documents are validated (`loadbench.schema.result.problems`) before they
  are stored; a local file is never overwritten, with the same or different
  content.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from loadbench.cluster.dump import PREFIX as FILE_PREFIX
from loadbench.schema import display, other_kind, parse_json, read_json
from loadbench.schema import result as results
from loadbench.storage.files import FILE_MODE

# A folder or file name that stays inside its parent on any filesystem.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,119}")
MAX_DEPTH = 8                 # folders in a helper record's path
MAX_LOG_BYTES = 512 << 20     # read of one pod's log; more is reported as truncated
_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class CollectError(RuntimeError):
    """Collection could not proceed; the message says what to check."""


@dataclass
class Report:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # pods whose log could not be read

    def summary(self) -> str:
        text = (f"{len(self.written)} written, {len(self.unchanged)} already present, "
                f"{len(self.conflicts)} conflicting (kept local), {len(self.invalid)} invalid")
        if self.renamed:
            text += f", {len(self.renamed)} stored under a safe name"
        if self.failed:
            text += f", {len(self.failed)} pod log(s) unreadable"
        return text


def client_api(kubeconfig: str | None = None, context: str | None = None) -> tuple[Any, str]:
    """(CoreV1Api, default namespace) from the in-cluster service account or a kubeconfig.

    The namespace is the kubeconfig context's, or the pod's own in-cluster,
    as kubectl would use.
    """
    from kubernetes import client  # imported when used: collect_results --help stays quick
    from kubernetes import config as kube_config
    config: Any = kube_config  # its functions are unannotated: called as Any under any mypy settings
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


# --- names and paths -----------------------------------------------------------------------

def _short(value: Any, limit: int = 80) -> str:
    text = display(str(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {_short(text, 200)}" if text else type(exc).__name__


def safe_name(value: Any, fallback: str = "unknown") -> tuple[str, bool]:
    """(a name that stays inside its folder, whether value had to be changed).

    A value that is already a plain name is kept; anything else (separators,
    '..', absolute paths, NUL, odd characters, very long names, not a string)
    becomes its plain characters plus a short hash of the original, so two
    different unsafe names never share a folder."""
    if value is None or value == "":
        return fallback, False
    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return value, False
    raw = value if isinstance(value, str) else json.dumps(value, default=str)[:4096]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip(".-")[:80] or fallback
    digest = hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{cleaned}-{digest}", True


def relative_parts(path: Any) -> tuple[list[str] | None, str | None]:
    """A helper record's path as plain names, or why it is refused."""
    if not isinstance(path, str):
        return None, f"path is a {type(path).__name__}, not a string"
    if "\x00" in path:
        return None, "path contains NUL"
    if len(path) > 1024:
        return None, "path longer than 1024 characters"
    if path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path):
        return None, "absolute path: it would leave the destination folder"
    parts = path.split("/")
    if ".." in parts:
        return None, "path has '..': it would leave the destination folder"
    if len(parts) > MAX_DEPTH:
        return None, f"path deeper than {MAX_DEPTH} folders"
    odd = [p for p in parts if not SAFE_NAME.fullmatch(p)]
    if odd:
        return None, f"path part {_short(odd[0], 40)!r} is not a plain name (letters, digits, . _ -)"
    if not parts[-1].endswith(".json"):
        return None, "not a .json file"
    return parts, None


# --- writing inside --out ------------------------------------------------------------------

def _open_folder(root_fd: int, parts: list[str]) -> int:
    """A descriptor of root/parts..., created as needed; refuses a symbolic link or a file
    on the way (OSError), so nothing can redirect the write outside root."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _write_new(folder_fd: int, name: str, data: bytes) -> bool:
    """Create folder/name with data, atomically and exclusively; False if it exists."""
    tmp = f".tmp-collect-{uuid.uuid4().hex}.json"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE, dir_fd=folder_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp, dir_fd=folder_fd)
        except OSError:
            pass


def _same_as_local(folder_fd: int, name: str, doc: Any) -> bool | None:
    """True/False when folder/name exists, None when it does not. A symbolic link
    or anything but a regular file there counts as different and is never followed."""
    try:
        os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    local, why = read_json(name, dir_fd=folder_fd)
    return why is None and local == doc


def store(doc: Any, parts: list[str], dest: str, report: Report, where: str | None = None) -> None:
    """Validate and write one document under dest/parts..., never clobbering a file and
    never leaving dest. Problems go to the report, never raised."""
    shown = os.path.join(dest, *parts)
    where = where or shown
    try:
        bad = results.problems(doc)
        if bad:
            report.invalid.append((where, "; ".join(bad)))
            return
        data = (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode("utf-8")
        os.makedirs(dest, exist_ok=True)
        root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            try:
                folder_fd = _open_folder(root_fd, parts[:-1])
            except OSError as e:
                report.invalid.append((where, f"not written: a folder on the way to {shown} is a "
                                              f"symbolic link or not a folder ({e.strerror or e})"))
                return
            try:
                same = _same_as_local(folder_fd, parts[-1], doc)
                if same is None and _write_new(folder_fd, parts[-1], data):
                    report.written.append(shown)
                elif same:
                    report.unchanged.append(shown)
                else:
                    report.conflicts.append(shown)
            finally:
                os.close(folder_fd)
        finally:
            os.close(root_fd)
    except Exception as e:  # one document's trouble is that document's only
        report.invalid.append((where, f"not stored: {_why(e)}"))


# --- from the pods' logs -------------------------------------------------------------------

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


def read_log(api: Any, name: str, namespace: str, limit: int = MAX_LOG_BYTES) -> tuple[str, bool]:
    """(a pod's log as text, whether it was cut at limit). Bytes that are not UTF-8
    become U+FFFD, so one binary line cannot make the whole log unreadable."""
    resp = api.read_namespaced_pod_log(name=name, namespace=namespace, _preload_content=False)
    if isinstance(resp, str):  # a client that ignores _preload_content
        return resp, False
    try:
        chunks, size = [], 0
        while size <= limit:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        release = getattr(resp, "release_conn", None)
        if release:
            release()
    data = b"".join(chunks)[:limit]
    text = data.decode("utf-8", "replace")
    headers = getattr(resp, "headers", None) or {}
    if str(headers.get("Content-Type", "")).startswith("application/json"):
        # The API server sends logs as text/plain; a JSON string is decoded as the client would.
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError):
            decoded = None
        if isinstance(decoded, str):
            text = decoded
    return text, size > limit


def _each_record(text: str, prefix: str, report: Report, where: Callable[[int], str],
                 not_a_record: Callable[[Any], str], handle: Callable[[str, dict[str, Any], int], None]
                 ) -> int:
    """Hand each `prefix` line's JSON object to handle(where, record, n), n counting those lines;
    returns how many there were. Bad JSON, not an object, or anything handle raises is that
    line's entry in the report and never stops the rest."""
    n = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.startswith(prefix):
            continue
        n += 1
        here = where(lineno)
        try:
            record, why = parse_json(line[len(prefix):])
            if why is None and not isinstance(record, dict):
                why = not_a_record(record)
            if why is not None:
                report.invalid.append((here, why))
                continue
            handle(here, record, n)
        except Exception as e:  # RecursionError, MemoryError, anything: this line only
            report.invalid.append((here, f"not processed: {_why(e)}"))
    return n


def _log_results(text: str, pod: str, uid: str, dest: str, report: Report) -> int:
    """Store every LOADBENCH_RESULT line of one pod's log; returns how many there were."""
    pod_name, _ = safe_name(pod, "pod")
    uid_name = re.sub(r"[^A-Za-z0-9]", "", str(uid or ""))[:8]

    def handle(where: str, doc: dict[str, Any], n: int) -> None:
        run_id, run_changed = safe_name(doc.get("run_id"))
        label, label_changed = safe_name(doc.get("label"))
        parts = [run_id, label, f"{pod_name}-{uid_name}-{n}.json"]
        before = len(report.written) + len(report.unchanged)
        store(doc, parts, dest, report, where)
        if len(report.written) + len(report.unchanged) > before:
            for key, changed, value in (("run_id", run_changed, run_id), ("label", label_changed, label)):
                if changed:
                    report.renamed.append((where, f"{key} {_short(doc.get(key))!r} is not a "
                                                  f"plain folder name: stored under {value!r}"))

    return _each_record(text, results.LOG_PREFIX, report, lambda n: f"pod {_short(pod)} log line {n}",
                        lambda doc: "; ".join(results.problems(doc)), handle)


def _cut(report: Report, pod: str) -> None:
    report.failed.append((f"pod {pod}", f"log longer than {MAX_LOG_BYTES >> 20} MiB: read up to there"))


def from_logs(api: Any, namespace: str, selector: str, dest: str,
              progress: Callable[[str], None] = print) -> Report:
    """LOADBENCH_RESULT lines from every pod that matches the selector."""
    report = Report()
    try:
        items = api.list_namespaced_pod(namespace, label_selector=selector).items or []
    except Exception as e:
        raise CollectError(f"could not list pods in namespace {namespace!r}: {_why(e)}") from e
    pods = [p for p in items if _selector_matches(selector, (p.metadata.labels if p.metadata else None))]
    if not pods:
        raise CollectError(f"no pods match {selector!r} in namespace {namespace!r} (finished "
                           "Jobs delete theirs after ttlSecondsAfterFinished: collect from the PVC)")
    for i, pod in enumerate(pods, start=1):
        name = str(getattr(pod.metadata, "name", None) or "")
        try:
            text, cut = read_log(api, name, namespace)
            if cut:
                _cut(report, _short(name))
            n = _log_results(text, name, getattr(pod.metadata, "uid", None) or "", dest, report)
        except Exception as e:  # deleted meanwhile, API error, connection reset: this pod only
            report.failed.append((f"pod {_short(name)}", f"log could not be read: {_why(e)}"))
            progress(f"[{i}/{len(pods)}] {_short(name)}: log could not be read ({_why(e)})")
            continue
        progress(f"[{i}/{len(pods)}] {_short(name)}: {n} result line(s)")
    return report


# --- from the PVC --------------------------------------------------------------------------

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
    """Store what the helper printed: one `LOADBENCH_FILE {"path", "doc"|"error"}` per file."""
    base = [prefix] if prefix else []

    def handle(where: str, record: dict[str, Any], n: int) -> None:
        if isinstance(record.get("path"), str):
            where = _short(record["path"], 200)
        if "error" in record:
            report.invalid.append((where, f"on the volume: {_short(record['error'], 300)}"))
            return
        parts, why = relative_parts(record.get("path"))
        if parts is None:
            report.invalid.append((where, why or "path refused"))
        elif "doc" not in record:
            report.invalid.append((where, "record has no document"))
        elif not other_kind(record["doc"]):  # a node's ceilings file: not a result, stays on the volume
            store(record["doc"], base + parts, dest, report, where)

    _each_record(text, FILE_PREFIX, report, lambda n: f"helper log line {n}",
                 lambda record: "not a {path, doc} record", handle)


def from_pvc(api: Any, namespace: str, claim: str, image: str, dest: str, results_path: str = "",
             sub_path: str = "results", timeout: float = 300.0, poll: float = 1.0,
             progress: Callable[[str], None] = print) -> Report:
    """Create the helper pod, wait until it has printed everything, read, delete."""
    if results_path and not SAFE_NAME.fullmatch(results_path):
        raise CollectError(f"--run-id {results_path!r}: use only letters, digits, '.', '_' and '-' "
                           "(a RUN_ID folder name)")
    if sub_path and (sub_path.startswith("/") or ".." in sub_path.split("/")):
        raise CollectError(f"--sub-path {sub_path!r}: a relative folder inside the PVC, without '..'")
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
                try:
                    last = read_log(api, name, namespace)[0].strip().splitlines()[-1:]
                except Exception as e:
                    last = [f"(log unreadable: {_why(e)})"]
                raise CollectError(f"helper pod {name} failed: {_waiting_reason(pod)} "
                                   f"{_short(' '.join(last), 300)}".strip())
            if time.monotonic() > deadline:
                raise CollectError(
                    f"helper pod {name} did not finish within {timeout:g} s (phase {phase or 'unknown'}"
                    f"{', ' + _waiting_reason(pod) if _waiting_reason(pod) else ''}); check "
                    f"`kubectl -n {namespace} describe pod {name}`: image pull, PVC {claim!r} "
                    f"bound and mountable on a node? It has been deleted.")
            progress(f"waiting for pod/{name}: {phase or 'unknown'}")
            time.sleep(poll)
        try:
            text, cut = read_log(api, name, namespace)
        except Exception as e:
            raise CollectError(f"could not read the log of helper pod {name}: {_why(e)}") from e
        report = Report()
        if cut:
            _cut(report, name)
        _parse_files(text, dest, report, results_path)
        return report
    finally:  # also on Ctrl-C: never leave the helper behind
        try:
            api.delete_namespaced_pod(name=name, namespace=namespace, grace_period_seconds=0)
            progress(f"deleted pod/{name}")
        except Exception as e:  # already gone, or the API is unreachable: say so
            if getattr(e, "status", None) != 404:
                progress(f"could not delete pod/{name}: {_why(e)}; delete it by hand")


def iter_lines(report: Report) -> Iterable[str]:
    for where, why in report.failed:
        yield f"{where}: {why}"
    for where, why in report.invalid:
        yield f"skipped {where}: {why}"
    for where, why in report.renamed:
        yield f"renamed {where}: {why}"
    for path in report.conflicts:
        yield f"kept local {display(path)}: the cluster's copy differs"
