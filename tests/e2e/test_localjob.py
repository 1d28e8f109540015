"""The manifests drive the real scripts: run them through localjob on opt-tiny."""

from __future__ import annotations

import json

from loadbench import localjob, results
from tests.conftest import ROOT

CPU = {"DEVICE": "cpu", "MODEL_ID": "random/opt-tiny", "MAX_NEW_TOKENS": "2",
       "CEILING_SECONDS": "0.1"}


def test_save_then_benchmark_manifests_run_and_produce_documents(tmp_path):
    pvc = {"loadbench-nvme": str(tmp_path / "pvc")}
    (save,) = localjob.load_jobs(str(ROOT / "save-models-job.yaml"))
    res = localjob.run_job(save, pvc, CPU, log=lambda m: None)
    assert res.ok, res
    manifest = json.loads((tmp_path / "pvc/models/gpt-j-6b/manifest.json").read_text())
    assert set(manifest["formats"]) == {"tensorizer", "safetensors", "bin"}

    bench = localjob.load_jobs(str(ROOT / "benchmark-job.yaml"))
    for job in bench:
        out = localjob.run_job(job, pvc, CPU, completions=2, log=lambda m: None)
        assert out.ok and out.exit_codes == {0: [0], 1: [0]}, out
    docs, skipped = results.read_many(str(tmp_path / "pvc/results"))
    assert not skipped
    by_lib: dict[str, list] = {}
    for d in docs:
        by_lib.setdefault(d["library"], []).append(d)
    assert set(by_lib) == {"tensorizer", "safetensors", "huggingface", "huggingface-bin"}
    for lib, ds in by_lib.items():
        assert sorted(d["identity"]["completion_index"] for d in ds) == [0, 1]
        for d in ds:
            assert d["status"] == "ok" and d["run_id"] == "gpt-j-6b-cold"
            assert d["identity"]["job"] == f"loadbench-{lib}"
            assert d["identity"]["pod"].startswith(f"loadbench-{lib}-")
            assert d["identity"]["namespace"] == "local" and d["identity"]["pod_uid"]
            assert d["ceilings"]["storage_read"]["gbps"] > 0  # CEILINGS=1 in the manifest


def test_exit_code_2_fails_the_job_at_once(tmp_path):
    job = next(j for j in localjob.load_jobs(str(ROOT / "benchmark-job.yaml"))
               if j["metadata"]["name"] == "loadbench-safetensors")
    res = localjob.run_job(job, {"loadbench-nvme": str(tmp_path)}, {**CPU, "NUM_TRIALS": "zero"},
                           completions=3, log=lambda m: None)
    assert res.status == "Failed" and res.reason.startswith("PodFailurePolicy")
    assert sum(len(codes) for codes in res.exit_codes.values()) == 1  # no retry, no next index
    assert "NUM_TRIALS='zero'" in res.reason


def test_exit_code_1_is_retried_per_index(tmp_path):
    pvc = {"loadbench-nvme": str(tmp_path / "pvc")}
    (save,) = localjob.load_jobs(str(ROOT / "save-models-job.yaml"))
    assert localjob.run_job(save, pvc, {**CPU, "LIBRARIES": "safetensors"}, log=lambda m: None).ok
    weights = tmp_path / "pvc/models/gpt-j-6b/safetensors/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)  # same size, different bytes: trials fail verification
    weights.write_bytes(bytes(data))
    job = next(j for j in localjob.load_jobs(str(ROOT / "benchmark-job.yaml"))
               if j["metadata"]["name"] == "loadbench-safetensors")
    res = localjob.run_job(job, pvc, {**CPU, "CEILINGS": "0", "SKIP_INFERENCE": "1"},
                           completions=1, log=lambda m: None)
    limit = job["spec"]["backoffLimitPerIndex"]
    assert res.status == "Failed" and res.exit_codes == {0: [1] * (limit + 1)}


def test_cli_reports_unmapped_pvc(tmp_path, capsys):
    code = localjob.main([str(ROOT / "save-models-job.yaml")])
    assert code == 2
    assert "pass --pvc loadbench-nvme=DIR" in capsys.readouterr().err
