"""The tier CI cannot run: every library, peers included, loading onto a real GPU.

Skipped without CUDA. On a GPU machine: `make test-gpu` (the peers must be installed:
pip install -r requirements-peers.txt, or the wheels of benchmarks/gpu-wheels.txt).
"""

from __future__ import annotations

import pytest
import torch

from loadbench import loaders, schema
from tests.conftest import run_script

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_every_library_loads_onto_the_gpu_verified(tmp_path, mode):
    model = tmp_path / "m"
    env = {"MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(model), "DEVICE": "cuda",
           "LIBRARIES": ",".join(loaders.NAMES)}
    save = run_script("save_models.py", env)
    assert save.returncode == 0, save.stderr
    proc = run_script("deserialize_benchmark.py", {**env, "RES_PATH": str(tmp_path / "res"),
                                                   "CACHE_MODE": mode, "MAX_NEW_TOKENS": "4",
                                                   "CEILINGS": "measure", "CEILING_SECONDS": "0.3"})
    assert proc.returncode == 0, proc.stderr
    docs, skipped = schema.read_many(str(tmp_path / "res"))
    assert not skipped
    assert {d["library"] for d in docs} == set(loaders.NAMES)
    for d in docs:
        assert d["device"]["type"] == "cuda" and d["io_mode"], d["label"]
        assert all(t["status"] == "ok" and t["first_token_s"] for t in d["trials"]), d["label"]


@pytest.mark.parametrize("pin", ["ALLOC", "REGISTER", "SLOTS"])
def test_the_reference_ring_pins_every_way_and_says_what_it_cost(tmp_path, pin):
    """REF_PIN: cudaHostAlloc or cudaHostRegister of one ring, or each reader registering its own
    slots; every tensor verified, the ring's size and pinning time recorded (the pinning is
    inside the timed load), the registered memory released after the load."""
    env = {"MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(tmp_path / "m"), "DEVICE": "cuda",
           "LIBRARIES": "reference"}
    assert run_script("save_models.py", {**env, "LIBRARIES": "safetensors"}).returncode == 0
    proc = run_script("deserialize_benchmark.py", {**env, "RES_PATH": str(tmp_path / "res"),
                                                   "REF_PIN": pin, "SKIP_INFERENCE": "1",
                                                   "CEILINGS": "0", "NUM_TRIALS": "2"})
    assert proc.returncode == 0, proc.stderr
    (doc,) = schema.read_many(str(tmp_path / "res"))[0]
    assert ("cudaHostAlloc" if pin == "ALLOC" else "cudaHostRegister") in doc["io_mode"]
    for t in doc["trials"]:
        info = t["library_info"]
        assert t["status"] == "ok" and info["pin"] == pin.lower()
        assert info["ring_bytes"] > 0 and 0 < info["ring_s"] < t["total_s"]
        # where the load went: the device allocation, the pipeline, its readers' stages
        assert 0 < info["allocation_s"] < t["total_s"] and 0 < info["pipeline_s"] < t["total_s"]
        assert info["readers_read_s"] > 0 and info["readers_submit_s"] > 0
        if pin != "ALLOC":
            assert 0 < info["register_s"] and 0 < info["unregister_s"]
            assert info["register_s"] + info["unregister_s"] <= info["ring_s"] + 1e-6
