"""The manifests drive the real scripts: run them through localjob on opt-tiny, on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadbench import schema
from loadbench.cluster import localjob, matrix
from loadbench.cluster.summary import shown_path
from loadbench.errors import EXIT_BAD_INPUT, EXIT_OK, ConfigError
from tests.conftest import ROOT

# The experiment as a test wants it: tiny, on the CPU, no ceilings, no generation.
CPU = {"DEVICE": "cpu", "MODEL_ID": "random/opt-tiny", "CEILINGS": "0", "SKIP_INFERENCE": "1"}
CLAIM = "loadbench-nvme"
QUIET = {"log": lambda m: None, "output": lambda line: None}


def manifest(name: str) -> str:
    return str(ROOT / name)


def job_named(path: str, name: str) -> dict:
    return next(j for j in localjob.load_jobs(manifest(path)) if j["metadata"]["name"] == name)


def configmaps(*paths: str) -> dict[str, localjob.ConfigMap]:
    return localjob.configmaps_for([manifest(p) for p in paths])


def stub(job: dict, code: str) -> dict:
    """The Job with its command replaced by a short Python program (policy tests, no model)."""
    job["spec"]["template"]["spec"]["containers"][0]["command"] = ["python", "-c", code]
    return job


@pytest.fixture(scope="module")
def pvc(tmp_path_factory) -> Path:
    """The PVC folder after the save Job ran, with MODEL_ID moved to opt-tiny by an override."""
    root = tmp_path_factory.mktemp("pvc")
    (save,) = localjob.load_jobs(manifest("save-models-job.yaml"))
    res = localjob.run_job(save, {CLAIM: str(root)}, {**CPU, "LIBRARIES": "safetensors,tensorizer"},
                           configmaps=configmaps("save-models-job.yaml"), **QUIET)
    assert res.ok, res
    return root


def documents(root: Path) -> list[dict]:
    found, skipped = schema.read_many(str(root))
    assert not skipped, skipped
    return found


def test_save_job_files_the_model_where_the_overridden_model_id_says(pvc):
    manifest_json = json.loads((pvc / "models/opt-tiny/manifest.json").read_text())
    assert {"tensorizer", "safetensors"} <= set(manifest_json["formats"])
    assert not (pvc / "models/gpt-j-6b").exists(), "MODEL_PATH is derived, so --set MODEL_ID moves it"


def test_matrix_job_via_the_cli_shows_each_pod_the_results_folder_and_a_summary(pvc, capsys):
    """Two pods at once (parallelism 2), each running the variant its index picks in the seeded
    order; the output is each pod's lines as `kubectl logs --prefix` shows them, where the
    results went (RUN_ID derived from the overridden MODEL_ID), and plot_results' table."""
    env = {**CPU, "MATRIX": "safetensors;tensorizer:TZR_NUM_READERS=2", "MATRIX_SEED": "7"}
    sets = [arg for k, v in env.items() for arg in ("--set", f"{k}={v}")]
    code = localjob.main([manifest("benchmark-matrix-job.yaml"), "--pvc", f"{CLAIM}={pvc}", *sets,
                          "--completions", "2", "--parallelism", "2"])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    pod_lines = [ln for ln in out.splitlines() if ln.startswith("[pod/")]
    assert pod_lines and all(re.match(r"\[pod/loadbench-matrix-[01]-[0-9a-f]{5}/benchmark\] ", ln)
                             for ln in pod_lines)
    shortened = [ln for ln in pod_lines if "LOADBENCH_RESULT" in ln]
    assert len(shortened) == 2 and all(" ok, " in ln and len(ln) < 200 for ln in shortened)
    assert "ConfigMap loadbench-experiment from experiment.env (kustomization.yaml)" in err
    results = pvc / "results/opt-tiny-cold"
    shown = shown_path(str(results))
    assert f"results: {shown} (" in err and "job/loadbench-matrix: Complete, 2 pods" in err
    table = out.split(f"summary of {shown}", 1)[1]  # plot_results' table
    assert re.search(r"^library .* median s", table, re.M)
    assert re.search(r"^safetensors ", table, re.M) and re.search(r"^tensorizer-numreaders2 ", table, re.M)

    planned = {i: str(v) for i, _, v in matrix.plan(env, 2)}
    for i, variant in planned.items():
        assert re.search(rf"\] matrix: index {i} is round 0, {re.escape(variant)} \(2 variants", out)
    got = {d["identity"]["completion_index"]: d for d in documents(results)
           if d["identity"]["job"] == "loadbench-matrix"}
    labels = {"safetensors": "safetensors", "tensorizer:TZR_NUM_READERS=2": "tensorizer-numreaders2"}
    assert {i: d["label"] for i, d in got.items()} == {i: labels[v] for i, v in planned.items()}
    assert all(d["status"] == "ok" for d in got.values())
    (a, b) = got.values()
    assert max(a["started_at"], b["started_at"]) < min(a["finished_at"], b["finished_at"]), \
        "parallelism 2: both pods at once"


GLOO = """
import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank())]); dist.all_reduce(t)
print("rank", dist.get_rank(), "of", dist.get_world_size(), "at", os.environ["MASTER_ADDR"], "sum", t.item())
dist.destroy_process_group()  # else gloo may abort at exit (SIGABRT), and the Job fails as one
"""


def test_tp_ranks_meet_through_the_headless_service_rewritten_to_this_machine(tmp_path):
    job = stub(job_named("benchmark-tp-multinode.yaml", "loadbench-tp"), GLOO)
    log: list[str] = []
    res = localjob.run_job(job, {CLAIM: str(tmp_path)}, CPU,
                           configmaps=configmaps("benchmark-tp-multinode.yaml"),
                           log=log.append, output=lambda line: None)
    assert res.ok, res
    said = sorted(line for p in res.pods for line in p.lines if line.startswith("rank"))
    assert said == ["rank 0 of 2 at 127.0.0.1 sum 1.0", "rank 1 of 2 at 127.0.0.1 sum 1.0"]
    assert any("MASTER_PORT=" in m for m in log)


def test_a_failed_rank_fails_the_tp_job_and_stops_its_peers(tmp_path):
    job = stub(job_named("benchmark-tp-multinode.yaml", "loadbench-tp"),
               "import os, sys, time; print('up', flush=True); "
               "sys.exit(1) if os.environ['RANK'] == '1' else time.sleep(120)")
    res = localjob.run_job(job, {CLAIM: str(tmp_path)}, CPU,
                           configmaps=configmaps("benchmark-tp-multinode.yaml"), **QUIET)
    assert res.status == "Failed" and res.reason == "MaxFailedIndexesExceeded"
    assert res.exit_codes == {1: [1], 0: [143]}, "rank 0 got SIGTERM, rank 1 no second attempt"


@pytest.mark.slow
def test_tp_multinode_job_runs_both_ranks_of_the_benchmark(tmp_path):
    """The two pods form ONE group of 2 ranks; only rank 0's pod writes the document."""
    llama = {**CPU, "MODEL_ID": "random/llama-tiny", "LIBRARIES": "safetensors"}
    (save,) = localjob.load_jobs(manifest("save-models-job.yaml"))
    saved = localjob.run_job(save, {CLAIM: str(tmp_path)}, {**llama, "TP_SIZE": "2"},
                             configmaps=configmaps("save-models-job.yaml"), **QUIET)
    assert saved.ok, saved
    job = job_named("benchmark-tp-multinode.yaml", "loadbench-tp")
    res = localjob.run_job(job, {CLAIM: str(tmp_path)}, {**llama, "RUN_ID": "tp"},
                           configmaps=configmaps("benchmark-tp-multinode.yaml"), **QUIET)
    assert res.ok and res.exit_codes == {0: [0], 1: [0]}, res
    (doc,) = documents(tmp_path / "results/tp")  # one document for the group, not one per pod
    assert doc["status"] == "ok" and doc["tp_size"] == 2 and doc["library"] == "safetensors"
    assert doc["identity"]["job"] == "loadbench-tp" and doc["identity"]["completion_index"] == 0
    assert doc["tp"]["multinode"] is True and doc["tp"]["backend"] == "gloo"
    pods = {p.index: p for p in res.pods}
    assert [r["pod"] for r in doc["tp"]["ranks"]] == [pods[0].name, pods[1].name]
    (trial,) = doc["trials"]
    assert trial["status"] == "ok" and trial["mismatches"] == [] and trial["tensors_verified"] == 42
    assert [(r["rank"], r["status"], r["tensors_verified"], r["mismatches"]) for r in trial["ranks"]] == [
        (0, "ok", 21, []), (1, "ok", 21, [])]  # every slice of both ranks verified bit for bit
    assert trial["total_s"] == max(r["barrier_s"] for r in trial["ranks"])
    assert sum(line.startswith("LOADBENCH_RESULT") for line in pods[0].lines) == 1
    assert not any(line.startswith("LOADBENCH_RESULT") for line in pods[1].lines)
    assert "rank 1 of 2 pods: rank 0's pod (127.0.0.1) wrote the 1 document" in pods[1].last_line


# Each pod says it is up, then waits for its sibling (index 0 with 1, 2 with 3) to say so too:
# a pod that ran alone would never see its sibling and fail the Job with exit 2.
HANDSHAKE = """
import os, sys, time
up, index = os.environ["HANDSHAKE_DIR"], int(os.environ["JOB_COMPLETION_INDEX"])
open(os.path.join(up, str(index)), "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(os.path.join(up, str(index ^ 1))):
    if time.monotonic() > deadline:
        print("sibling", index ^ 1, "never ran beside", index)
        sys.exit(2)
    time.sleep(0.01)
print("gpu", os.environ["CUDA_VISIBLE_DEVICES"])
"""


def test_concurrent_pods_each_get_their_own_gpu(tmp_path):
    job = stub(job_named("benchmark-job.yaml", "loadbench-safetensors"), HANDSHAKE)
    up = tmp_path / "up"
    up.mkdir()
    res = localjob.run_job(job, {CLAIM: str(tmp_path)}, {**CPU, "HANDSHAKE_DIR": str(up)}, completions=4,
                           parallelism=2, gpus=["0", "1"], configmaps=configmaps("benchmark-job.yaml"),
                           **QUIET)
    assert res.ok, res.reason
    pods = {p.index: p for p in res.pods}
    assert sorted(pods) == [0, 1, 2, 3] and len(res.pods) == 4, "one attempt per index"
    for p in res.pods:
        assert p.lines == [f"gpu {p.gpus}"]
    for a, b in ((pods[0], pods[1]), (pods[2], pods[3])):
        assert max(a.started, b.started) < min(a.finished, b.finished), "siblings ran at once"
        assert {a.gpus, b.gpus} == {"0", "1"}, "two pods at once on one GPU"


def test_a_pod_waits_pending_while_its_gpu_is_taken(tmp_path):
    """Each pod lists the pods that finished before it started, then says it finished."""
    job = stub(job_named("benchmark-job.yaml", "loadbench-safetensors"),
               "import os; done = os.environ['HANDSHAKE_DIR']; print('after', sorted(os.listdir(done))); "
               "open(os.path.join(done, os.environ['JOB_COMPLETION_INDEX']), 'w').close()")
    done = tmp_path / "done"
    done.mkdir()
    one = localjob.run_job(job, {CLAIM: str(tmp_path)}, {**CPU, "HANDSHAKE_DIR": str(done)}, completions=2,
                           parallelism=2, gpus=["3"], configmaps=configmaps("benchmark-job.yaml"), **QUIET)
    assert one.ok, one.reason
    (a, b) = sorted(one.pods, key=lambda p: p.started)
    assert a.gpus == b.gpus == "3"
    assert a.lines == ["after []"] and b.lines == [f"after ['{a.index}']"], "b started after a finished"
    assert b.started >= a.finished, "a pod waits (Pending) for a free GPU"


def test_exit_code_2_fails_the_job_at_once(tmp_path):
    job = job_named("benchmark-job.yaml", "loadbench-safetensors")
    res = localjob.run_job(job, {CLAIM: str(tmp_path)}, {**CPU, "NUM_TRIALS": "zero"}, completions=3,
                           configmaps=configmaps("benchmark-job.yaml"), **QUIET)
    assert res.status == "Failed" and res.reason.startswith("PodFailurePolicy")
    assert sum(len(codes) for codes in res.exit_codes.values()) == 1  # no retry, no next index
    assert "NUM_TRIALS='zero'" in res.reason


def test_exit_code_1_is_retried_per_index_then_fails_the_index(tmp_path):
    job = stub(job_named("benchmark-job.yaml", "loadbench-safetensors"), "import sys; sys.exit(1)")
    res = localjob.run_job(job, {CLAIM: str(tmp_path)}, CPU, completions=1,
                           configmaps=configmaps("benchmark-job.yaml"), **QUIET)
    limit = job["spec"]["backoffLimitPerIndex"]
    assert res.status == "Failed" and res.exit_codes == {0: [1] * (limit + 1)}
    assert res.reason == "indexes [0] failed"


def test_env_comes_from_the_experiment_the_job_and_set_in_that_order(tmp_path):
    job = job_named("benchmark-job.yaml", "loadbench-tensorizer")
    pvcs = {CLAIM: str(tmp_path)}
    spec = localjob.pod_spec(job, 3, 0, pvcs, {"MODEL_ID": "random/opt-tiny"},
                             configmaps("benchmark-job.yaml"))
    try:
        env = spec.env
        assert env["LIBRARIES"] == "tensorizer"  # the Job's env wins over the ConfigMap's
        assert env["CACHE_MODE"] == "cold" and env["MODEL_ID"] == "random/opt-tiny"  # --set wins over both
        assert env["JOB_COMPLETION_INDEX"] == "3" and env["JOB_NAME"] == "loadbench-tensorizer"
        assert env["POD_NAME"] == spec.name and spec.name.startswith("loadbench-tensorizer-3-")
        assert "MODEL_PATH" not in env and "RUN_ID" not in env
        assert spec.model_dir == str(tmp_path / "models/opt-tiny")  # derived, through the workingDir
        assert spec.results_dir == str(tmp_path / "results/opt-tiny-cold")
        assert all(spec.on_volume.values())
        assert spec.command == [sys.executable, str(ROOT / "deserialize_benchmark.py")]
    finally:
        localjob.cleanup(spec)
    assert not os.path.exists(spec.scratch)


def test_envfrom_resolves_from_the_manifests_or_an_env_file(tmp_path):
    job = job_named("benchmark-job.yaml", "loadbench-safetensors")
    pvcs = {CLAIM: str(tmp_path)}
    committed = localjob.configmaps_for([manifest("experiment-configmap.yaml")])
    assert committed["loadbench-experiment"].source == "experiment-configmap.yaml"
    _, env = localjob.pod_command(job, 0, 0, pvcs, configmaps=committed)
    assert env["MODEL_ID"] == "random/gpt-j-6b"
    other = tmp_path / "other.env"
    other.write_text("# a second experiment\nMODEL_ID=random/llama-2-7b\nCACHE_MODE=warm\n")
    for spec_ in (str(other), f"loadbench-experiment={other}"):
        found = localjob.configmaps_for([manifest("benchmark-job.yaml")], [spec_])
        _, env = localjob.pod_command(job, 0, 0, pvcs, configmaps=found)
        assert env["MODEL_ID"] == "random/llama-2-7b" and env["CACHE_MODE"] == "warm"
        assert "NUM_TRIALS" not in env  # the file replaces the ConfigMap, as a different one would
    lone = tmp_path / "lone.yaml"
    lone.write_text((ROOT / "benchmark-matrix-job.yaml").read_text())
    with pytest.raises(localjob.ManifestError, match="--env-file loadbench-experiment=FILE"):
        localjob.pod_command(localjob.load_jobs(str(lone))[0], 0, 0, pvcs,
                             configmaps=localjob.configmaps_for([str(lone)]))
    bad = tmp_path / "bad.env"
    bad.write_text("MODEL_ID\n")
    with pytest.raises(localjob.ManifestError, match="has no '='"):
        localjob.configmaps_for([str(lone)], [str(bad)])


def test_matrix_plan_is_seeded_balanced_and_derived_from_the_experiment(monkeypatch):
    env = {"LIBRARIES": "safetensors,tensorizer", "TZR_NUM_READERS": "1,4"}
    found = [str(v) for v in matrix.variants(env)]
    assert found == ["safetensors", "tensorizer:TZR_NUM_READERS=1", "tensorizer:TZR_NUM_READERS=4"]
    plan = [str(v) for _, _, v in matrix.plan(env, 9)]
    for r in range(3):
        assert sorted(plan[3 * r:3 * r + 3]) == sorted(found), "each round runs every variant once"
    assert plan == [str(v) for _, _, v in matrix.plan(env, 9)]
    reseeded = [str(v) for _, _, v in matrix.plan({**env, "MATRIX_SEED": "1"}, 9)]
    assert reseeded != plan and sorted(reseeded) == sorted(plan)
    explicit = matrix.variants({"MATRIX": "tensorizer; tensorizer:TZR_NUM_READERS=16 ;safetensors"})
    assert matrix.variant_env(explicit[1]) == {"LIBRARIES": "tensorizer", "TZR_NUM_READERS": "16"}
    for bad in ("nosuchlib", "tensorizer:IT_BACKEND=MMAP", "tensorizer:TZR_NUM_READERS=zero",
                "safetensors;safetensors", "flashpack:TP_SIZE=2", "reference:TP_SIZE=0"):
        with pytest.raises(ConfigError):
            matrix.variants({"MATRIX": bad})
    # TP sizes interleaved in one Job: per entry, or MATRIX_TP times the libraries that have a path
    tp = matrix.variants({"MATRIX": "reference;reference:TP_SIZE=2"})
    assert matrix.variant_env(tp[1]) == {"LIBRARIES": "reference", "TP_SIZE": "2"}
    both = [str(v) for v in matrix.variants({"LIBRARIES": "reference,flashpack", "MATRIX_TP": "1,2"})]
    assert both == ["reference:TP_SIZE=1", "reference:TP_SIZE=2", "flashpack:TP_SIZE=1"]
    only2 = [str(v) for v in matrix.variants({"LIBRARIES": "reference,flashpack", "MATRIX_TP": "2"})]
    assert only2 == ["reference:TP_SIZE=2", "flashpack:TP_SIZE=1"]  # no TP path: still runs, on one GPU
    for bad_tp in ("0", "1,1", "two"):
        with pytest.raises(ConfigError, match="MATRIX_TP"):
            matrix.variants({"LIBRARIES": "reference", "MATRIX_TP": bad_tp})
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert matrix.main(["--exec"]) == EXIT_BAD_INPUT  # not an Indexed Job's pod


def test_help_and_bad_arguments(tmp_path, capsys):
    for entry in (localjob.main, matrix.main):
        with pytest.raises(SystemExit) as exit_:
            entry(["--help"])
        assert exit_.value.code == EXIT_OK and "usage:" in capsys.readouterr().out
    assert localjob.main([manifest("save-models-job.yaml")]) == EXIT_BAD_INPUT
    assert "pass --pvc loadbench-nvme=DIR" in capsys.readouterr().err
    assert localjob.main([manifest("save-models-job.yaml"), "--set", "NOEQUALS"]) == EXIT_BAD_INPUT
    assert "--set takes NAME=VALUE, not 'NOEQUALS'" in capsys.readouterr().err
    assert localjob.main([manifest("benchmark-pvc.yaml")]) == EXIT_BAD_INPUT
    assert "no Job" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["loadbench.localjob", "loadbench.cluster.localjob"])
def test_both_module_names_run_the_same_command_line(module):
    """The README's name and the package's: each renders the committed ConfigMap."""
    proc = subprocess.run([sys.executable, "-m", module, "--render-configmap"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout == (ROOT / "experiment-configmap.yaml").read_text()
