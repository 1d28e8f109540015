"""collect_results over real HTTP against a local Kubernetes API emulator (kmock)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import kmock
import pytest
import yaml

from loadbench import cluster, results
from loadbench.collect_cli import main as collect_main
from tests.conftest import ROOT

NS = "bench"


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

    def serve_log(self, pod: str, text: str) -> None:
        def add() -> None:
            self.k[f"get /api/v1/namespaces/{NS}/pods/{pod}/log"] << text
        self.loop.call_soon_threadsafe(add)
        time.sleep(0.2)

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


def a_document(library: str = "safetensors", index: int = 0) -> dict:
    doc = results.new_document(library, library, {}, {"RUN_ID": "r1", "POD_NAME": f"p{index}",
                                                      "JOB_COMPLETION_INDEX": index})
    trial = {k: None for k in results.TRIAL_KEYS}
    trial.update(status="ok", cache_mode="cold", total_s=1.0 + index, mismatches=[])
    doc["trials"] = [trial]
    return doc


def pods(api) -> list[str]:
    return [p.metadata.name for p in api.list_namespaced_pod(NS).items]


def kubelet(emulator, api, results_dir: Path, outcome: str = "Succeeded") -> threading.Thread:
    """Plays the node: waits for the helper pod, runs its real command locally, reports back."""
    def work() -> None:
        for _ in range(200):
            names = pods(api)
            if names:
                break
            time.sleep(0.05)
        (name,) = names
        pod = api.read_namespaced_pod(name=name, namespace=NS)
        container = pod.spec.containers[0]
        mount = container.volume_mounts[0].mount_path
        arg = container.command[-1].replace(mount, str(results_dir))  # the subPath is the results folder
        out = subprocess.run([sys.executable, *container.command[1:-1], arg], capture_output=True,
                             text=True, cwd=ROOT).stdout
        emulator.serve_log(name, out)
        api.patch_namespaced_pod(name=name, namespace=NS, body={"status": {"phase": outcome}})
    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def test_from_pvc_reads_every_document_and_deletes_the_helper(emulator, tmp_path):
    api, namespace = cluster.client_api(emulator.kubeconfig)
    assert namespace == NS  # the context's namespace, as kubectl would use
    src = tmp_path / "pvc-results"
    paths = [results.write(a_document(lib, i), str(src))
             for i, lib in enumerate(["safetensors", "tensorizer", "huggingface"])]
    (src / "r1" / "broken.json").write_text("{not json")
    thread = kubelet(emulator, api, src)
    dest = tmp_path / "local"
    report = cluster.from_pvc(api, NS, "loadbench-nvme", "img:1", str(dest), timeout=20, poll=0.05,
                              progress=lambda m: None)
    thread.join()
    assert len(report.written) == 3 and pods(api) == []
    assert [why for where, why in report.invalid if "broken.json" in where]
    for p in paths:
        rel = Path(p).relative_to(src)
        assert json.loads((dest / rel).read_text()) == json.loads(Path(p).read_text())
    (key,) = [k for k in emulator.k.objects if k[0] == "v1/pods"]  # created and deleted over HTTP
    assert emulator.k.objects[key + (-1,)] is None and emulator.k.objects[key + (0,)]["spec"]

    # A second collection finds the same files and leaves them alone; a changed one is kept local.
    changed = dest / Path(paths[0]).relative_to(src)
    changed.write_text(json.dumps(dict(json.loads(changed.read_text()), status="error",
                                       error={"type": "x", "message": "y", "where": "z"})))
    thread = kubelet(emulator, api, src)
    again = cluster.from_pvc(api, NS, "loadbench-nvme", "img:1", str(dest), timeout=20, poll=0.05,
                             progress=lambda m: None)
    thread.join()
    assert len(again.unchanged) == 2 and again.conflicts == [str(changed)] and not again.written


def test_helper_pod_that_never_becomes_ready_times_out_and_is_deleted(emulator, tmp_path):
    api, namespace = cluster.client_api(emulator.kubeconfig)
    assert namespace == NS  # the context's namespace, as kubectl would use
    start = time.monotonic()
    with pytest.raises(cluster.CollectError, match=r"did not finish within 1 s \(phase unknown"):
        cluster.from_pvc(api, NS, "loadbench-nvme", "img:1", str(tmp_path), timeout=1, poll=0.1,
                         progress=lambda m: None)
    assert time.monotonic() - start < 10
    assert pods(api) == []


def test_from_logs_skips_and_reports_a_line_that_is_not_json(emulator, tmp_path):
    api, namespace = cluster.client_api(emulator.kubeconfig)
    assert namespace == NS  # the context's namespace, as kubectl would use
    for i, labels in enumerate([{"app.kubernetes.io/name": "loadbench"},
                                {"app.kubernetes.io/name": "loadbench"}, {"app": "other"}]):
        api.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod",
                                       "metadata": {"name": f"p{i}", "labels": labels, "uid": f"u{i}"},
                                       "spec": {"containers": [{"name": "c", "image": "i"}]}})
    emulator.serve_log("p0", "loadbench: starting\n" + results.log_line(a_document("tensorizer", 0))
                       + "\nLOADBENCH_RESULT {\"truncated\": \n")
    emulator.serve_log("p1", results.log_line(a_document("tensorizer", 1)) + "\n")
    emulator.serve_log("p2", results.log_line(a_document("huggingface", 2)) + "\n")
    dest = tmp_path / "out"
    code = collect_main(["--from-logs", "--kubeconfig", emulator.kubeconfig,  # no -n: the context's
                         "-l", "app.kubernetes.io/name=loadbench", "--out", str(dest)])
    assert code == 0
    docs, skipped = results.read_many(str(dest))
    assert not skipped
    assert sorted(d["identity"]["pod"] for d in docs) == ["p0", "p1"]  # p2 is not selected
    report = cluster.from_logs(api, NS, "app.kubernetes.io/name=loadbench", str(dest),
                               progress=lambda m: None)
    assert len(report.unchanged) == 2
    assert report.invalid == [(report.invalid[0][0], report.invalid[0][1])]
    assert "pod p0 log line 3" == report.invalid[0][0] and "not valid JSON" in report.invalid[0][1]


def test_cli_without_a_cluster_says_what_to_do(tmp_path, capsys):
    code = collect_main(["--from-logs", "--kubeconfig", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert code == 1
    assert "kubeconfig" in capsys.readouterr().err
