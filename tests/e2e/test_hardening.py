"""Flaky clusters and hostile input, for real: signals, full and unwritable disks, killed saves,
name collisions, unreachable hubs, terminals. Every case runs the real entry points."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loadbench import schema
from tests.conftest import ROOT, clean_env, result_lines, run_script


def bench_env(model: Path, res: Path, **env: str) -> dict[str, str]:
    return {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(model), "RES_PATH": str(res),
            "SKIP_INFERENCE": "1", **env}


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_leaves_an_error_document_with_the_trials_done(saved_model, tmp_path, sig, code):
    env = clean_env(bench_env(saved_model, tmp_path / "res", LIBRARIES="safetensors", NUM_TRIALS="500",
                              CACHE_MODE="warm"))
    proc = subprocess.Popen([sys.executable, str(ROOT / "deserialize_benchmark.py")], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "trial 3/500" not in seen:  # let some trials finish first
        line = proc.stderr.readline()
        assert line, f"the run ended early: {seen[-2000:]}"
        seen += line
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, seen + err
    (doc,) = schema.read_many(str(tmp_path / "res"))[0]
    assert doc["status"] == "error" and len(doc["trials"]) >= 3
    assert all(t["status"] == "ok" for t in doc["trials"])
    name = signal.Signals(sig).name
    assert f"terminated by {name} during trial {len(doc['trials']) + 1} of 500" in doc["error"]["message"]
    assert f"exit {code}" in last_line(err) and "Traceback" not in err


def test_an_unwritable_res_path_exits_2_before_any_trial(saved_model, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where RES_PATH should be a folder")
    proc = run_script("deserialize_benchmark.py", bench_env(saved_model, blocker, LIBRARIES="safetensors",
                                                            RESULT_LINES="0", CEILINGS="reuse"))
    assert proc.returncode == 2, proc.stderr
    assert "trial" not in proc.stderr and not result_lines(proc.stdout)
    line = last_line(proc.stderr)
    assert f"RES_PATH={str(blocker)!r} is not writable" in line and "(exit 2)" in line
    assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line, no traceback


def test_results_unwritable_mid_run_exit_4_and_keep_the_data_in_the_log(saved_model, tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    (res / "blocked").write_text("a file where the run's folder should be")  # RES_PATH itself is fine
    proc = run_script("deserialize_benchmark.py", bench_env(saved_model, res, LIBRARIES="safetensors",
                                                            RESULT_LINES="0", RUN_ID="blocked"))
    assert proc.returncode == 4, proc.stderr
    (doc,) = result_lines(proc.stdout)  # printed although RESULT_LINES=0: the logs keep the data
    assert doc["status"] == "ok" and doc["trials"][0]["tensors_verified"] > 0
    line = last_line(proc.stderr)
    assert "could not be written" in line and "(exit 4)" in line


def test_documents_never_collide_and_are_group_readable(tmp_path):
    from loadbench.measure import document
    doc = document.new_document("safetensors", "safetensors", {}, None, {"RUN_ID": "r"}, {})
    doc["identity"].update(pod="same-pod", pid=1, completion_index=0)
    doc.update(model={"bytes": 1}, device={"type": "cpu"})
    paths = {document.write(doc, str(tmp_path)) for _ in range(20)}  # same pod, pid, index, second
    assert len(paths) == 20
    for p in paths:
        assert os.stat(p).st_mode & 0o777 == 0o640


def test_a_document_its_schema_refuses_is_never_written(tmp_path):
    from loadbench.measure import document
    doc = document.new_document("safetensors", "safetensors", {}, None, {"RUN_ID": "r"}, {})
    doc["trials"].append({"status": "ok", "total_s": float("nan")})
    with pytest.raises(document.InvalidDocument, match="trials.0.total_s"):
        document.write(doc, str(tmp_path))
    with pytest.raises(document.InvalidDocument):
        document.log_line(doc)
    assert not list(tmp_path.rglob("*.json"))


def test_a_killed_saves_staging_folders_are_removed_and_nothing_else(tmp_path):
    model = tmp_path / "m"
    stale = model / ".safetensors.partial-abc123"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    foreign = model / ".my-notes"
    foreign.mkdir()
    proc = run_script("save_models.py", {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(model),
                                         "LIBRARIES": "safetensors"})
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists() and foreign.exists()
    assert "left by a killed save" in proc.stderr


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_save_that_cannot_fit_fails_at_once_saying_how_much(small_tmpfs):
    proc = run_script("save_models.py", {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(small_tmpfs / "m"),
                                         "LIBRARIES": "tensorizer,safetensors,huggingface-bin,flashpack"})
    assert proc.returncode == 2, proc.stderr
    line = last_line(proc.stderr)
    assert "saving needs" in line and "free on" in line and str(small_tmpfs) in line
    assert "Traceback" not in proc.stderr


def test_enospc_from_torch_save_is_named_as_no_space():
    """torch's own message for a full disk is `unexpected pos`; /dev/full fails every write."""
    import torch

    from loadbench.measure.saving import no_space_message
    with pytest.raises(RuntimeError) as info:
        torch.save({"w": torch.zeros(1 << 20)}, "/dev/full")
    assert "no space left on /dev" in no_space_message(info.value, "/dev")


@pytest.mark.parametrize("model_id,code,needle", [
    ("not a model id!", 2, "is none of: a hub id (org/name)"),
    ("./no/such/folder", 2, "is none of"),
    ("some-org/some-model", 3, "the hub could not be reached"),
])
def test_model_id_malformed_is_2_unreachable_hub_is_3(tmp_path, model_id, code, needle):
    proc = run_script("save_models.py", {"MODEL_ID": model_id, "MODEL_PATH": str(tmp_path / "m"),
                                         "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2",
                                         "HF_HUB_DOWNLOAD_TIMEOUT": "2"}, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    line = last_line(proc.stderr)
    assert needle in line and "Traceback" not in line


def test_a_cuda_only_library_on_cpu_is_an_error_document_not_a_crash(saved_model, tmp_path):
    proc = run_script("deserialize_benchmark.py", bench_env(saved_model, tmp_path / "res",
                                                            LIBRARIES="instanttensor"))
    assert proc.returncode == 2, proc.stderr
    docs = schema.read_many(str(tmp_path / "res"))[0]
    assert sorted(d["label"] for d in docs) == ["instanttensor", "instanttensor-backendURING_BUFFERED"]
    assert all(d["error"]["type"] == "NeedsCUDA" and "needs CUDA" in d["error"]["message"] for d in docs)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", ["save_models.py", "deserialize_benchmark.py", "plot_results.py",
                                    "collect_results.py"])
def test_help_prints_and_touches_nothing(tmp_path, script):
    before = set(os.listdir(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, capture_output=True,
                          text=True, env=clean_env({}))
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
    assert os.listdir(tmp_path) == [] and set(os.listdir(ROOT)) == before
    if script in ("save_models.py", "deserialize_benchmark.py"):
        assert "MODEL_ID" in proc.stdout and "exit codes" in proc.stdout and "example" in proc.stdout
        junk = subprocess.run([sys.executable, str(ROOT / script), "--frobnicate"], cwd=tmp_path,
                              capture_output=True, text=True, env=clean_env({}))
        assert junk.returncode == 2 and os.listdir(tmp_path) == []


def test_the_loadbench_command_lists_its_subcommands():
    proc = subprocess.run([sys.executable, "-m", "loadbench", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=clean_env({}))
    assert proc.returncode == 0
    for sub in ("save", "bench", "report", "collect"):
        assert f"loadbench {sub}" in proc.stdout


def test_a_terminal_gets_progress_and_the_table_but_no_json(saved_model, tmp_path):
    master, slave = pty.openpty()
    env = clean_env(bench_env(saved_model, tmp_path / "res", LIBRARIES="safetensors"))
    proc = subprocess.run([sys.executable, str(ROOT / "deserialize_benchmark.py")], env=env, cwd=ROOT,
                          stdout=slave, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.returncode == 0, proc.stderr
    assert b"LOADBENCH_RESULT" not in out
    assert "safetensors trial 1/1: ok" in proc.stderr and "median s" in proc.stderr


def test_the_checkpoint_is_readable_by_the_group(saved_model):
    for folder in ("tensorizer", "safetensors", "bin", "flashpack"):
        path = saved_model / folder
        assert os.stat(path).st_mode & 0o050 == 0o050, folder
        for f in path.iterdir():
            assert os.stat(f).st_mode & 0o040, f
    assert os.stat(saved_model / "manifest.json").st_mode & 0o040
