"""Tensor parallel with four ranks (TP_SIZE=4) on gloo: what issue 23's 4-GPU run does, on CPU.
In the slower tier: a TP=4 save and four rank processes take ~20 s here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import result_lines, run_script
from tests.e2e.test_tp import TENSORS, save_tp


@pytest.fixture(scope="module")
def llama4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """random/llama-tiny saved with TP_SIZE=4 (its 4 heads and 172-wide MLP split four ways)."""
    return save_tp(tmp_path_factory, 4)


def test_tp4_on_gloo_loads_each_ranks_slices_and_records_its_bytes(llama4, tmp_path):
    """What the 4-GPU run (issue 23) does, on CPU: four ranks, one document, per-rank bytes."""
    libs = ["tensorizer", "safetensors", "reference"]
    proc = run_script("deserialize_benchmark.py", {
        "MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(llama4), "RES_PATH": str(tmp_path / "res"),
        "TP_SIZE": "4", "SKIP_INFERENCE": "1", "CACHE_MODE": "cold", "LIBRARIES": ",".join(libs)},
        timeout=300)
    assert proc.returncode == 0, proc.stderr
    docs = result_lines(proc.stdout)
    assert [d["library"] for d in docs] == libs
    for doc in docs:
        assert doc["status"] == "ok" and doc["tp_size"] == 4 and len(doc["tp"]["pids"]) == 4
        (trial,) = doc["trials"]
        assert [r["rank"] for r in trial["ranks"]] == [0, 1, 2, 3]
        for r in trial["ranks"]:
            assert r["status"] == "ok" and r["tensors_verified"] == TENSORS
            assert isinstance(r["storage_read_bytes"], int) and isinstance(r["cache_read_bytes"], int)
            assert r["bytes"] < doc["model"]["bytes"]  # a share, not the whole model
        assert sum(r["bytes"] for r in trial["ranks"]) < 1.1 * doc["model"]["bytes"]
    # the rank processes serve every library of the pod: each load's place in them is recorded
    assert [d["trials"][0]["index_in_process"] for d in docs] == [0, 1, 2]
    # the reference reads only its share: rowwise slices as row spans, not whole tensors
    assert docs[2]["trials"][0]["library_info"]["bytes_read"] < 0.5 * docs[2]["model"]["bytes"]
    tensorizer = docs[0]["trials"][0]
    assert tensorizer["library_info"]["file"] == "rank-0-of-4.tensors"
