"""collect_results over real HTTP against a local Kubernetes API emulator (kmock).

What pods print is untrusted: the hostile cases below check that nothing is
written outside --out and that one bad line, file or pod never stops the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

import kmock
import pytest
import yaml

from loadbench.cluster import collect as cluster
from loadbench.cluster import dump
from loadbench.cluster.cli import main as collect_main
from loadbench.cluster.dump import PREFIX as FILE_PREFIX
from loadbench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from loadbench.measure import document
from loadbench.schema import read_many
from loadbench.schema.result import LOG_PREFIX, SCHEMA
from tests.conftest import ROOT

NS = "bench"
DEEP = "[" * 100_000 + "]" * 100_000


class Emulator:
    """kmock's KubernetesEmulator served on 127.0.0.1 from a background event loop."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.thread.start()
        assert self.ready.wait(20), "emulator did not start"

    async def _serve(self) -> None:
        async with kmock.KubernetesEmulator() as k, kmock.Server(k, host="127.0.0.1", port=0) as s:
            k.resources["v1/pods"] = {"kind": "Pod", "namespaced": True}
            self.k, self.url, self.loop = k, str(s.url).rstrip("/"), asyncio.get_running_loop()
            self.stop = asyncio.Event()
            self.ready.set()
            await self.stop.wait()

    def serve_log(self, pod: str, payload: str | bytes | int) -> None:
        """The pod's log: text or raw bytes (sent as they are, as the API server does), or an
        HTTP status (an API error)."""
        if isinstance(payload, str):
            payload = payload.encode()

        async def add() -> None:
            self.k[f"get /api/v1/namespaces/{NS}/pods/{pod}/log"] << payload
        # Returns once the emulator's loop has added the route: served from the next request on.
        asyncio.run_coroutine_threadsafe(add(), self.loop).result(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)


@pytest.fixture
def emulator(tmp_path):
    emu = Emulator()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": emu.url}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "u", "namespace": NS}}]}))
    emu.kubeconfig = str(kubeconfig)
    yield emu
    emu.close()


def a_document(library: str = "safetensors", index: int = 0, **top) -> dict:
    """A complete, valid result document as the producer writes it."""
    now = document.now()
    doc = {
        "schema": SCHEMA, "status": "ok", "error": None, "library": library, "label": library,
        "options": {}, "io_mode": None, "run_id": "r1",
        "identity": {"job": "bench", "completion_index": index, "pod": f"p{index}", "pod_uid": None,
                     "node": "n1", "namespace": NS, "hostname": f"p{index}", "pid": 7},
        "settings": {"RUN_ID": "r1", "CACHE_MODE": "cold", "MODEL_ID": "random/opt-tiny"},
        "model": {"id": "random/opt-tiny", "name": "opt-tiny", "bytes": 1_000_000},
        "device": {"type": "cpu", "name": "x86_64"}, "versions": {}, "machine": {},
        "ceilings": None, "pod": None, "warnings": [], "tp_size": 1,
        "trials": [{"status": "ok", "cache_mode": "cold", "resident_before": 0.0,
                    "total_s": 1.0 + index, "mismatches": [], "started_at": now, "finished_at": now}],
        "started_at": now, "finished_at": now,
    }
    doc.update(top)
    return doc


def pods(api) -> list[str]:
    return [p.metadata.name for p in api.list_namespaced_pod(NS).items]


def make_pods(api, names: list[str], labels: dict | None = None) -> None:
    for i, name in enumerate(names):
        api.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                       "metadata": {"name": name, "uid": f"u{i}", "labels": labels or {
                                           "app.kubernetes.io/name": "loadbench"}},
                                       "spec": {"containers": [{"name": "c", "image": "i"}]}})


def files_under(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """predicate()'s first truthy value, polled until the deadline, where the test fails."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def in_thread(work: Callable[[], None]) -> Future:
    """work() on a thread; its Future's result() re-raises what failed there, in the test."""
    done: Future = Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as e:
            done.set_exception(e)
    threading.Thread(target=run, daemon=True).start()
    return done


def kubelet(emulator, api, results_dir: Path | None = None, outcome: str = "Succeeded",
            log: str | None = None) -> Future:
    """Plays the node: waits for the helper pod, runs its real command locally (or prints
    `log` instead, as a hostile image would), reports back."""
    def work() -> None:
        (name,) = wait_for(lambda: pods(api), "the helper pod")
        out = log
        if out is None:
            pod = api.read_namespaced_pod(name=name, namespace=NS)
            container = pod.spec.containers[0]
            mount = container.volume_mounts[0].mount_path
            arg = container.command[-1].replace(mount, str(results_dir))  # the subPath is the results folder
            out = subprocess.run([sys.executable, *container.command[1:-1], arg], capture_output=True,
                                 text=True, cwd=ROOT, timeout=60).stdout
        emulator.serve_log(name, out)
        api.patch_namespaced_pod(name=name, namespace=NS, body={"status": {"phase": outcome}})
    return in_thread(work)


def test_from_pvc_reads_every_document_and_deletes_the_helper(emulator, tmp_path):
    api, namespace = cluster.client_api(emulator.kubeconfig)
    assert namespace == NS  # the context's namespace, as kubectl would use
    src = tmp_path / "pvc-results"
    paths = [document.write(a_document(lib, i), str(src))
             for i, lib in enumerate(["safetensors", "tensorizer", "huggingface"])]
    (src / "r1" / "broken.json").write_text("{not json")
    (src / "r1" / "ceilings").mkdir()  # a node's ceilings file: not a result, left on the volume
    (src / "r1" / "ceilings" / "n1.json").write_text(json.dumps(
        {"node": "n1", "device": "cuda:0", "ceilings": {}, "measured_by": "p0", "measured_at": None}))
    thread = kubelet(emulator, api, src)
    dest = tmp_path / "local"
    report = cluster.from_pvc(api, NS, "loadbench-nvme", "img:1", str(dest), timeout=20, poll=0.05,
                              progress=lambda m: None)
    thread.result(30)
    assert len(report.written) == 3 and pods(api) == []
    assert [where for where, why in report.invalid] == ["r1/broken.json"]
    assert not (dest / "r1" / "ceilings").exists()
    for p in paths:
        rel = Path(p).relative_to(src)
        assert json.loads((dest / rel).read_text()) == json.loads(Path(p).read_text())
    (key,) = [k for k in emulator.k.objects if k[0] == "v1/pods"]  # created and deleted over HTTP
    assert emulator.k.objects[key + (-1,)] is None and emulator.k.objects[key + (0,)]["spec"]
    command = emulator.k.objects[key + (0,)]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "loadbench.cluster.dump"]

    # A second collection finds the same files and leaves them alone; a changed one is kept local.
    changed = dest / Path(paths[0]).relative_to(src)
    changed.write_text(json.dumps(dict(json.loads(changed.read_text()), status="error",
                                       error={"type": "x", "message": "y", "where": "z"})))
    thread = kubelet(emulator, api, src)
    again = cluster.from_pvc(api, NS, "loadbench-nvme", "img:1", str(dest), timeout=20, poll=0.05,
                             progress=lambda m: None)
    thread.result(30)
    assert len(again.unchanged) == 2 and again.conflicts == [str(changed)] and not again.written


def test_helper_pod_that_never_becomes_ready_times_out_and_is_deleted(emulator, tmp_path):
    api, namespace = cluster.client_api(emulator.kubeconfig)
    assert namespace == NS  # the context's namespace, as kubectl would use
    said: list[str] = []
    with pytest.raises(cluster.CollectError, match=r"did not finish within 1 s \(phase unknown"):
        cluster.from_pvc(api, NS, "loadbench-nvme", "img:1", str(tmp_path), timeout=1, poll=0.1,
                         progress=said.append)
    created, *waiting, deleted = said
    name = created.split()[1].removeprefix("pod/")
    assert created.startswith(f"created pod/{name} ") and deleted == f"deleted pod/{name}"
    assert waiting and set(waiting) == {f"waiting for pod/{name}: unknown"}, "polled, then gave up"
    assert pods(api) == []


def test_from_logs_skips_and_reports_a_line_that_is_not_json(emulator, tmp_path):
    api, namespace = cluster.client_api(emulator.kubeconfig)
    assert namespace == NS  # the context's namespace, as kubectl would use
    make_pods(api, ["p0", "p1"])
    make_pods(api, ["p2"], labels={"app": "other"})
    emulator.serve_log("p0", "loadbench: starting\n" + document.log_line(a_document("tensorizer", 0))
                       + "\nLOADBENCH_RESULT {\"truncated\": \n")
    emulator.serve_log("p1", document.log_line(a_document("tensorizer", 1)) + "\n")
    emulator.serve_log("p2", document.log_line(a_document("huggingface", 2)) + "\n")
    dest = tmp_path / "out"
    code = collect_main(["--from-logs", "--kubeconfig", emulator.kubeconfig,  # no -n: the context's
                         "-l", "app.kubernetes.io/name=loadbench", "--out", str(dest)])
    assert code == EXIT_OK
    docs, skipped = read_many(str(dest))
    assert not skipped
    assert sorted(d["identity"]["pod"] for d in docs) == ["p0", "p1"]  # p2 is not selected
    report = cluster.from_logs(api, NS, "app.kubernetes.io/name=loadbench", str(dest),
                               progress=lambda m: None)
    assert len(report.unchanged) == 2
    ((where, why),) = report.invalid
    assert where == "pod p0 log line 3" and "not valid JSON" in why


def test_cli_without_a_cluster_says_what_to_do(tmp_path, capsys):
    code = collect_main(["--from-logs", "--kubeconfig", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert code == EXIT_FAILED
    assert "kubeconfig" in capsys.readouterr().err


# --- hostile input ---------------------------------------------------------------------------

def test_from_logs_never_writes_outside_out_and_one_bad_line_never_stops_the_rest(emulator, tmp_path):
    """run_id/label from a document become folder names: sanitized, reported, kept inside --out."""
    api, _ = cluster.client_api(emulator.kubeconfig)
    make_pods(api, ["evil"])
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = [
        a_document(run_id="../../x", label="../../../lbl"),
        a_document(run_id=str(outside / "abs")),
        a_document(run_id="a\x00b"),
        a_document(run_id="r" * 199, label="/" + "l" * 150),
        a_document(label=["a", "list"]),
    ]
    nan = document.log_line(a_document()).replace('"total_s":1.0', '"total_s":NaN')
    assert "NaN" in nan
    lines = ["plain output"] + [LOG_PREFIX + json.dumps(d) for d in hostile] + [
        LOG_PREFIX + DEEP, nan, LOG_PREFIX + "null", document.log_line(a_document("tensorizer"))]
    emulator.serve_log("evil", "\n".join(lines) + "\n")
    dest = tmp_path / "out" / "inner"
    dest.parent.mkdir()
    before = files_under(tmp_path) - files_under(tmp_path / "out")
    report = cluster.from_logs(api, NS, "app.kubernetes.io/name=loadbench", str(dest),
                               progress=lambda m: None)

    assert files_under(tmp_path) - files_under(tmp_path / "out") == before  # nothing outside --out
    real = os.path.realpath(dest)
    assert len(report.written) == 4
    for path in report.written:
        assert os.path.realpath(path).startswith(real + os.sep) and os.path.isfile(path)
        assert all(len(part) <= 130 for part in Path(path).relative_to(dest).parts)
    renamed = " ".join(why for _, why in report.renamed)
    assert "run_id '../../x'" in renamed and "label '../../../lbl'" in renamed and "\x00" not in renamed
    reasons = dict(report.invalid)
    assert reasons["pod evil log line 4"].startswith("run_id:")                # NUL
    assert reasons["pod evil log line 6"].startswith("label:")                 # a list
    assert "nested too deeply" in reasons["pod evil log line 7"]
    assert reasons["pod evil log line 8"] == "trials.0.total_s: Input should be a finite number"
    assert "not an object" in reasons["pod evil log line 9"]
    assert len(report.invalid) == 5
    docs, skipped = read_many(str(dest))
    assert len(docs) == 4 and not skipped


def test_from_logs_refuses_symbolic_links_planted_in_out(emulator, tmp_path):
    api, _ = cluster.client_api(emulator.kubeconfig)
    make_pods(api, ["p0"])
    dest, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    (dest / "r1").symlink_to(elsewhere, target_is_directory=True)       # a folder on the way
    victim = tmp_path / "victim.json"
    victim.write_text("precious\n")
    (dest / "r2" / "safetensors").mkdir(parents=True)
    (dest / "r2" / "safetensors" / "p0-u0-2.json").symlink_to(victim)    # the file itself
    emulator.serve_log("p0", document.log_line(a_document()) + "\n"
                       + document.log_line(a_document(run_id="r2")) + "\n")
    report = cluster.from_logs(api, NS, "app.kubernetes.io/name=loadbench", str(dest),
                               progress=lambda m: None)
    assert list(elsewhere.iterdir()) == [] and victim.read_text() == "precious\n"
    assert not report.written
    assert "symbolic link" in dict(report.invalid)["pod p0 log line 1"]
    assert report.conflicts == [str(dest / "r2" / "safetensors" / "p0-u0-2.json")]


def test_a_pod_whose_log_cannot_be_read_is_reported_and_collection_goes_on(emulator, tmp_path):
    api, _ = cluster.client_api(emulator.kubeconfig)
    make_pods(api, ["broken", "binary", "good"])
    emulator.serve_log("broken", 500)
    emulator.serve_log("binary", b"\xff\xfe garbage \x00\n"
                       + document.log_line(a_document("tensorizer", 1)).encode() + b"\n\xc3\x28\n")
    emulator.serve_log("good", document.log_line(a_document("safetensors", 2)) + "\n")
    dest = tmp_path / "out"
    code = collect_main(["--from-logs", "--kubeconfig", emulator.kubeconfig, "--out", str(dest)])
    assert code == EXIT_OK
    report = cluster.from_logs(api, NS, "app.kubernetes.io/name=loadbench", str(dest),
                               progress=lambda m: None)
    assert [where for where, _ in report.failed] == ["pod broken"]
    assert "500" in report.failed[0][1]
    assert len(report.unchanged) == 2  # the binary pod's valid line survives its garbage
    assert sorted(d["identity"]["pod"] for d in read_many(str(dest))[0]) == ["p1", "p2"]


@pytest.mark.parametrize("path, why", [
    ("/etc/x", "absolute"), ("/etc/x.json", "absolute"), ("a/../../b.json", "'..'"),
    ("../x.json", "'..'"), ("r1/a\x00b.json", "NUL"), ("C:/x.json", "absolute"),
    ("r1/" + "a" * 2000 + ".json", "longer"), ("r1/.hidden.json", "plain name"),
    ("r1//x.json", "plain name"), ("r1/a b.json", "plain name"), ("/".join("a" * 9) + ".json", "deeper"),
    ("r1/x.txt", ".json"), (5, "not a string"), (None, "not a string"),
])
def test_helper_record_paths_that_would_leave_out_are_refused(path, why):
    parts, reason = cluster.relative_parts(path)
    assert parts is None and why in reason


def test_safe_names_stay_inside_their_folder():
    assert cluster.safe_name("gpt-j-6b-cold") == ("gpt-j-6b-cold", False)
    assert cluster.safe_name(None) == ("unknown", False)
    for hostile in ("../../x", "/etc", "..", ".", "a/b", "a\x00b", "x" * 5000, ["a"], "é", "-rf"):
        name, changed = cluster.safe_name(hostile)
        assert changed and cluster.SAFE_NAME.fullmatch(name) and len(name) <= 120, hostile
    assert cluster.safe_name("a/b")[0] != cluster.safe_name("a:b")[0]  # never merged


def test_from_pvc_refuses_hostile_helper_records_and_keeps_the_good_one(emulator, tmp_path):
    api, _ = cluster.client_api(emulator.kubeconfig)
    outside = tmp_path / "outside"
    good = a_document()
    records = [
        {"path": str(outside / "x.json"), "doc": good},       # absolute
        {"path": "a/../../b.json", "doc": good},
        {"path": "../escape.json", "doc": good},
        {"path": "r1/a\x00b.json", "doc": good},
        {"path": 5, "doc": good},
        ["not", "a", "record"],
        {"path": "r1/bad.json", "doc": {"schema": SCHEMA, "label": ["x"]}},
        {"path": "r1/gone.json", "error": "PermissionError: \n[Errno 13]"},
        {"path": "r1/ok.json", "doc": good},
    ]
    log = "\n".join(FILE_PREFIX + json.dumps(r) for r in records)
    log += "\n" + FILE_PREFIX + DEEP + "\n" + FILE_PREFIX + "{nope\n"
    thread = kubelet(emulator, api, log=log)
    dest = tmp_path / "out"
    report = cluster.from_pvc(api, NS, "loadbench-nvme", "img:1", str(dest), timeout=20, poll=0.05,
                              progress=lambda m: None)
    thread.result(30)
    assert not outside.exists() and not (tmp_path / "escape.json").exists()
    assert not (tmp_path / "b.json").exists() and pods(api) == []
    assert report.written == [str(dest / "r1" / "ok.json")]
    assert len(report.invalid) == len(records) - 1 + 2
    text = "\n".join(f"{w}: {y}" for w, y in report.invalid)
    for expected in ("absolute path", "'..'", "NUL", "not a string", "not a {path, doc} record",
                     "label: Input should be a valid string", "on the volume: PermissionError",
                     "nested too deeply", "not valid JSON"):
        assert expected in text, expected
    assert all("\n" not in w + y for w, y in report.invalid)


def test_from_pvc_refuses_a_run_id_that_is_not_a_folder_name(emulator, tmp_path):
    api, _ = cluster.client_api(emulator.kubeconfig)
    for bad in ("../..", "/etc", "a/b"):
        with pytest.raises(cluster.CollectError, match="--run-id"):
            cluster.from_pvc(api, NS, "c", "img:1", str(tmp_path), results_path=bad, progress=lambda m: None)
    assert pods(api) == []  # refused before any pod was created


def test_dump_reports_links_fifos_and_garbage_and_goes_on(tmp_path):
    """The helper's side: the volume was written by pods, so it is read as untrusted."""
    root = tmp_path / "results"
    (root / "r1" / "lib").mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"token": "s3cr3t"}))
    good = document.write(a_document(), str(root))
    (root / "r1" / "lib" / "link.json").symlink_to(secret)
    (root / "r1" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    os.mkfifo(root / "r1" / "lib" / "fifo.json")   # opening it for reading would block forever
    (root / "r1" / "lib" / "deep.json").write_text(DEEP)
    (root / "r1" / "lib" / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    proc = subprocess.run([sys.executable, "-m", "loadbench.cluster.dump", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_OK and "Traceback" not in proc.stderr
    assert "s3cr3t" not in proc.stdout
    records = {r["path"]: r for r in (json.loads(line[len(FILE_PREFIX):])
                                      for line in proc.stdout.splitlines() if line.startswith(FILE_PREFIX))}
    assert records[os.path.relpath(good, root)]["doc"]["run_id"] == "r1"
    assert "symbolic link" in records["r1/lib/link.json"]["error"]
    assert "symbolic link" in records["r1/dirlink"]["error"]
    assert "not a regular file" in records["r1/lib/fifo.json"]["error"]
    assert "nested too deeply" in records["r1/lib/deep.json"]["error"]
    assert "UTF-8" in records["r1/lib/binary.json"]["error"]


def test_dump_of_a_missing_folder_is_bad_input_no_retry_can_fix(tmp_path, capsys):
    assert dump.main([str(tmp_path / "nothing")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    assert dump.main([]) == EXIT_BAD_INPUT and "usage:" in capsys.readouterr().err


def test_cli_with_an_unreachable_api_server_ends_in_one_line(tmp_path, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": NS}}]}))
    code = collect_main(["--from-logs", "--kubeconfig", str(kubeconfig), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED and "Traceback" not in err
    assert "error:" in err.strip().splitlines()[-1]
