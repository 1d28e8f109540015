"""Tensor parallel (TP_SIZE=2) end to end: real rank processes, gloo on CPU, random/llama-tiny."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadbench import loaders, schema
from loadbench.measure import tp_launch, tp_parent, tp_plan
from tests.conftest import ROOT, clean_env, result_lines, run_script

# every library with a TP path that runs on CPU, from the registry: a new one is tested here too
TP_LIBRARIES = [n for n in loaders.NAMES if loaders.get(n).supports_tp and not loaders.get(n).needs_cuda]
TENSORS = 21  # random/llama-tiny's state dict


def save_tp(tmp_path_factory: pytest.TempPathFactory, world: int) -> Path:
    """random/llama-tiny saved with TP_SIZE=world: per-slice checksums and per-rank tensorizer files."""
    path = tmp_path_factory.mktemp(f"tp{world}") / "llama-tiny"
    proc = run_script("save_models.py", {"MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(path),
                                         "LIBRARIES": "tensorizer,safetensors", "TP_SIZE": str(world)})
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tp(tmp_path_factory, 2)


def bench(model: Path, res: Path, **env: str):
    base = {"MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(model), "RES_PATH": str(res),
            "TP_SIZE": "2", "SKIP_INFERENCE": "1", "CACHE_MODE": "cold"}
    return run_script("deserialize_benchmark.py", {**base, **env}, timeout=120)


def test_save_writes_slice_checksums_and_rank_files(llama):
    manifest = json.loads((llama / "manifest.json").read_text())
    layout = manifest["tp"]["2"]
    q = layout["model.layers.0.self_attn.q_proj.weight"]
    o = layout["model.layers.1.self_attn.o_proj.weight"]
    assert (q["dim"], q["style"], o["dim"], o["style"]) == (0, "colwise", 1, "rowwise")
    assert [s["shape"] for s in q["slices"]] == [[32, 64], [32, 64]]
    assert [s["shape"] for s in o["slices"]] == [[64, 32], [64, 32]]
    assert q["slices"][0]["checksum"] != q["slices"][1]["checksum"]
    assert "model.norm.weight" not in layout  # replicated: checked against the whole tensor
    files = {f["name"]: f for f in manifest["formats"]["tensorizer"]["files"]}
    assert files["model.tensors"]["weights"] is True  # TP_SIZE=1 loads read only this one
    for rank in (0, 1):
        entry = files[f"rank-{rank}-of-2.tensors"]
        assert (entry["weights"], entry["tp_size"], entry["rank"]) == (False, 2, rank)
    assert manifest["formats"]["tensorizer"]["bytes"] == files["model.tensors"]["bytes"]


def test_plan_picks_colwise_and_rowwise_from_the_config():
    from loadbench import models
    config = models.config_for("random/llama-tiny")
    model = models.skeleton(config, models.DTYPES["float16"])
    dims = tp_plan.split_dims(model)
    assert dims["model.layers.0.self_attn.q_proj.weight"] == (0, "colwise")
    assert dims["model.layers.0.mlp.down_proj.weight"] == (1, "rowwise")
    assert dims["lm_head.weight"] == (0, "colwise_gather_output")
    assert dims["model.embed_tokens.weight"] == (0, "embedding_rowwise")  # transformers adds it
    assert dims["model.layers.0.input_layernorm.weight"] == (None, None)
    # The config decides: swap two styles and the split dims follow.
    config.base_model_tp_plan = dict(config.base_model_tp_plan, **{
        "layers.*.self_attn.q_proj": "rowwise", "layers.*.mlp.down_proj": "colwise"})
    swapped = tp_plan.split_dims(models.skeleton(config, models.DTYPES["float16"]))
    assert swapped["model.layers.1.self_attn.q_proj.weight"] == (1, "rowwise")
    assert swapped["model.layers.1.mlp.down_proj.weight"] == (0, "colwise")
    assert tp_plan.bounds(172, 0, 2) == (0, 86) and tp_plan.bounds(5, 3, 4) == (5, 0)  # DTensor's Shard
    with pytest.raises(tp_plan.NoPlan, match="no tensor-parallel plan"):
        tp_plan.split_dims(models.skeleton(models.config_for("random/opt-tiny"), models.DTYPES["float16"]))


def test_tp2_loads_verified_bit_for_bit(llama, tmp_path):
    proc = bench(llama, tmp_path / "res", LIBRARIES=",".join(TP_LIBRARIES))
    assert proc.returncode == 0, proc.stderr
    docs, skipped = schema.read_many(str(tmp_path / "res"))
    assert not skipped, skipped
    assert sorted(d["library"] for d in docs) == sorted(TP_LIBRARIES)
    assert [d["library"] for d in result_lines(proc.stdout)] == TP_LIBRARIES
    for doc in docs:
        assert doc["status"] == "ok" and doc["tp_size"] == 2 and doc["io_mode"], doc["label"]
        assert doc["tp"]["backend"] == "gloo" and len(doc["tp"]["pids"]) == 2
        (trial,) = doc["trials"]
        assert trial["status"] == "ok" and trial["mismatches"] == []
        ranks = trial["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        for r in ranks:
            assert r["status"] == "ok" and r["tensors_verified"] == TENSORS and r["mismatches"] == []
            assert 0 < r["total_s"] <= r["barrier_s"] and r["device"] == "cpu"
            assert 0.0 <= r["resident_before"] <= 1.0 and r["bytes"] > 0
        # the pod's time is the slowest rank's, barrier to barrier
        assert trial["total_s"] == max(r["barrier_s"] for r in ranks)
        assert trial["tensors_verified"] == 2 * TENSORS and 0.0 <= trial["resident_before"] <= 1.0
        # each rank holds about half of the split tensors, all of the replicated ones
        assert sum(r["bytes"] for r in ranks) < 1.05 * doc["model"]["bytes"]
    by = {d["library"]: d for d in docs}
    # one set of ranks per pod, one job per library, as one process serves every library at TP_SIZE=1
    assert len({tuple(d["tp"]["pids"]) for d in docs}) == 1
    assert sorted(d["tp"]["job"] for d in docs) == list(range(len(TP_LIBRARIES)))
    assert "rank startup" in [p["name"] for p in by[TP_LIBRARIES[0]]["pod"]["phases"]]  # the first pays
    assert "strided" in by["reference"]["io_mode"] and "get_slice" in by["safetensors"]["io_mode"]
    assert by["tensorizer"]["trials"][0]["library_info"]["file"] == "rank-0-of-2.tensors"
    assert "process-group loader" in by["fastsafetensors"]["io_mode"]
    assert "RUNAI_STREAMER_DIST=1" in by["runai-streamer"]["io_mode"]
    runai = by["runai-streamer"]["trials"][0]["library_info"]
    assert (runai["distributed"], runai["group_size"]) == (True, 2)  # it did split the reads


def test_tp2_reference_with_overlapped_reads_verifies_on_every_rank(llama, tmp_path):
    """REF_OVERLAP=1 on the TP path: each rank starts its own bytes' reads, then builds its
    skeleton; both ranks verify bit for bit and say how they read."""
    proc = bench(llama, tmp_path / "res", LIBRARIES="reference", REF_OVERLAP="1")
    assert proc.returncode == 0, proc.stderr
    (doc,) = schema.read_many(str(tmp_path / "res"))[0]
    assert doc["status"] == "ok" and doc["tp_size"] == 2
    assert doc["io_mode"].endswith("skeleton built while the reads run"), doc["io_mode"]
    (trial,) = doc["trials"]
    assert [r["tensors_verified"] for r in trial["ranks"]] == [TENSORS, TENSORS]
    assert all(r["status"] == "ok" and r["mismatches"] == [] for r in trial["ranks"])
    assert trial["library_info"]["overlap"] is True  # set only where the reads ran in their thread
    assert trial["library_info"]["reads_lead_s"] > 0


def _corrupt_rank1_slice(root: Path, name: str) -> None:
    """Flip bytes inside rank 1's half of a colwise tensor, keeping the file's size."""
    path = root / "safetensors" / "model.safetensors"
    with open(path, "r+b") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        begin, end = json.loads(f.read(hlen))[name]["data_offsets"]
        at = 8 + hlen + begin + 3 * (end - begin) // 4  # in the second half: rank 1's rows
        f.seek(at)
        old = f.read(4)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in old))


def test_corrupted_slice_is_a_mismatch_on_the_right_rank(llama, tmp_path):
    damaged = tmp_path / "llama-tiny"
    shutil.copytree(llama, damaged)
    name = "model.layers.1.self_attn.q_proj.weight"
    _corrupt_rank1_slice(damaged, name)
    proc = bench(damaged, tmp_path / "res", LIBRARIES="safetensors")
    assert proc.returncode == 1, proc.stderr
    (doc,) = result_lines(proc.stdout)
    assert doc["status"] == "error" and doc["error"]["type"] == "TrialFailed"
    (trial,) = doc["trials"]
    assert trial["status"] == "mismatch"
    rank0, rank1 = trial["ranks"]
    assert rank0["status"] == "ok" and rank0["mismatches"] == []
    assert rank1["status"] == "mismatch" and [m["tensor"] for m in rank1["mismatches"]] == [name]
    assert trial["mismatches"][0]["rank"] == 1 and "rank 1" in trial["mismatches"][0]["problem"]


def test_two_pods_with_world_size_2_form_one_group_and_rank_0_writes_the_document(llama, tmp_path):
    """What benchmark-tp-multinode.yaml's pods do: two processes, one rank each, TP_SIZE=1."""
    port = str(tp_launch.free_port())
    env = {"MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(llama), "RES_PATH": str(tmp_path / "res"),
           "RUN_ID": "pods", "TP_SIZE": "1", "SKIP_INFERENCE": "1", "CACHE_MODE": "cold",
           "LIBRARIES": "safetensors", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    pods = [subprocess.Popen([sys.executable, str(ROOT / "deserialize_benchmark.py")], cwd=ROOT, text=True,
                             env=clean_env({**env, "RANK": str(r), "POD_NAME": f"pod-{r}",
                                            "NODE_NAME": f"node-{r}"}),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (1, 0)]
    (out1, err1), (out0, err0) = (p.communicate(timeout=120) for p in pods)
    assert pods[1].returncode == 0, err0
    assert pods[0].returncode == 0, err1
    assert result_lines(out1) == [] and "rank 0's pod (127.0.0.1) wrote the 1 document(s)" in \
        err1.strip().splitlines()[-1]
    (line,) = result_lines(out0)
    docs, skipped = schema.read_many(str(tmp_path / "res"))
    assert not skipped and len(docs) == 1, skipped
    (doc,) = docs
    assert doc["_path"] and {**doc, "_path": None} == {**line, "_path": None}
    assert doc["status"] == "ok" and doc["tp_size"] == 2, doc.get("error")
    assert doc["identity"]["pod"] == "pod-0"
    assert doc["tp"]["multinode"] is True and len(doc["tp"]["pids"]) == 1
    assert doc["tp"]["ranks"] == [{"node": "node-0", "pod": "pod-0", "rank": 0},
                                  {"node": "node-1", "pod": "pod-1", "rank": 1}]
    (one,) = doc["trials"]
    assert one["status"] == "ok" and one["tensors_verified"] == 2 * TENSORS
    assert [(r["rank"], r["pod"], r["status"], r["tensors_verified"]) for r in one["ranks"]] == [
        (0, "pod-0", "ok", TENSORS), (1, "pod-1", "ok", TENSORS)]
    assert one["total_s"] == max(r["barrier_s"] for r in one["ranks"])


def test_unsupported_multinode_settings_are_a_config_error_exit_2(tmp_path):
    from loadbench.errors import ConfigError
    pods = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1"}
    for env, message in [({**pods, "RANK": "2"}, "0 <= RANK < WORLD_SIZE"),
                         ({**pods, "MASTER_ADDR": ""}, "rank 0's address"),
                         ({**pods, "MASTER_PORT": "x"}, "need integers")]:
        with pytest.raises(ConfigError, match=message):
            tp_launch.multinode(env, 1)
    assert tp_launch.multinode({"WORLD_SIZE": "1", "RANK": "0"}, 4) is None
    proc = run_script("deserialize_benchmark.py", {"MODEL_ID": "random/llama-tiny", "RES_PATH": str(tmp_path),
                                                   "TP_SIZE": "2", **pods}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "one rank per pod; set TP_SIZE=1" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_library_without_tp_is_an_error_document_exit_2(llama, tmp_path):
    proc = bench(llama, tmp_path / "res", LIBRARIES="huggingface-bin")
    assert proc.returncode == 2, proc.stderr
    (doc,) = result_lines(proc.stdout)
    assert doc["status"] == "error" and doc["error"]["type"] == "TPNotSupported"
    assert "not supported for this library in loadbench yet" in doc["error"]["message"]
    assert doc["tp_size"] == 2


# --- the launcher, with stand-in ranks: crashes and hangs never hang the pod ---------------

def _group(tmp_path: Path, code: str, **env: str) -> tp_launch.RankGroup:
    group = tp_launch.RankGroup(2, str(tmp_path), [sys.executable, "-c", code],
                         {**os.environ, **env})
    group.start()
    return group


def test_ranks_get_torchrun_variables_and_keep_nccl_ones(tmp_path):
    record = os.path.join(str(tmp_path), "rank-{}.jsonl")
    code = (f"import json, os; open({record!r}.format(os.environ['RANK']), 'a')"
            ".write(json.dumps(dict(kind='ready', env=dict(os.environ))) + '\\n')")
    group = _group(tmp_path, code, NCCL_DEBUG="WARN")
    try:
        group.wait(lambda recs: any(r["kind"] == "ready" for r in recs), 30, "startup")
    finally:
        group.stop()
    for rank, recs in enumerate(group.records):
        env = recs[0]["env"]
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(rank), str(rank), "2")
        assert env["MASTER_ADDR"] == "127.0.0.1" and int(env["MASTER_PORT"]) == group.port
        assert env["NCCL_DEBUG"] == "WARN"
        assert not any(k.startswith("NCCL_NVLS") for k in env if k not in os.environ)


@pytest.mark.parametrize("code, timeout, message", [
    ("import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(60)", 20,
     "rank 1 exited with code 3 during startup"),
    ("import time; time.sleep(60)", 1, "did not finish startup within 1 s"),
])
def test_crashed_or_hung_rank_stops_every_rank(tmp_path, code, timeout, message):
    group = _group(tmp_path, code)
    start = time.monotonic()
    with pytest.raises(tp_launch.RankFailed, match=message):
        group.wait(lambda recs: bool(recs), timeout, "startup")
    codes = group.stop()
    assert all(c is not None for c in codes), codes  # nobody left running
    assert time.monotonic() - start < 15


FAKE_RANK = """
import json, os, sys, time
folder, rank = sys.argv[-1], os.environ["RANK"]
def record(**r):
    open(os.path.join(folder, "rank-" + rank + ".jsonl"), "a").write(json.dumps(r) + "\\n")
record(kind="up")
while not os.path.exists(os.path.join(folder, "job-0.json")):
    time.sleep(0.01)
if sys.argv[-2] == "crash" and rank == "1":
    os._exit(3)
record(kind="ready", job=0)
time.sleep(60)
"""


@pytest.mark.parametrize("mode, where, message", [
    ("crash", "setup", "rank 1 exited with code 3 during setup"),
    ("hang", "trial 1", "did not finish trial 1 within 1 s"),
])
def test_rank_crash_or_hang_in_a_job_is_an_error_document(llama, tmp_path, monkeypatch, mode, where,
                                                          message):
    from loadbench import config
    from loadbench.measure.pod import PodClock, PodState
    from loadbench.measure.variant import run_variant
    monkeypatch.setattr(tp_parent, "TRIAL_TIMEOUT_BASE_S", 1.0)
    monkeypatch.setattr(tp_parent, "TRIAL_TIMEOUT_RATE", 1e18)
    cfg = config.load({"MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(llama), "TP_SIZE": "2",
                       "DEVICE": "cpu", "CEILINGS": "0", "SKIP_INFERENCE": "1",
                       "RES_PATH": str(tmp_path)})
    state = PodState()
    import torch
    start = time.monotonic()
    ranks = tp_parent.Ranks(cfg, torch.device("cpu"), state,
                            command=[sys.executable, "-c", FAKE_RANK, mode])
    doc, code = run_variant(ranks, "safetensors", {}, cfg, torch.device("cpu"), state, PodClock())
    assert code == 1 and doc["status"] == "error" and doc["error"]["type"] == "RankFailed"
    assert doc["error"]["where"] == where and message in doc["error"]["message"]
    assert [t["status"] for t in doc["trials"]] == (["error"] if where.startswith("trial") else [])
    pool = state.pool
    assert pool.closed and all(p.poll() is not None for p in pool.group.procs)  # every rank stopped
    assert time.monotonic() - start < 20
    assert not schema.problems(doc), schema.problems(doc)
