"""benchmarks/fidelity.py end to end on the CPU: loadbench's pod against the bare library calls,
each sample a process of its own that loads once, from a fork server or a new interpreter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_script


def _fidelity(model: Path, out: Path, *args: str, libraries: str = "safetensors,tensorizer"):
    return run_script("benchmarks/fidelity.py", {}, timeout=200, args=[
        "--device", "cpu", "--model-path", str(model), "--modes", "warm", "--libraries", libraries,
        "--out", str(out), *args])


def test_forked_samples_are_each_a_process_of_their_own_on_both_sides(saved_model, tmp_path):
    out = tmp_path / "fidelity.json"
    proc = _fidelity(saved_model, out, "--samples", "3")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["start"] == "forkserver" and "fork server" in doc["rule"] and doc["bare_to_device"] is True
    pids, parents = [], set()
    for key in ("safetensors|warm", "tensorizer|warm"):
        cell = doc["samples"][key]
        assert len(cell["loadbench"]) == len(cell["bare"]) == 3
        for sample in cell["loadbench"] + cell["bare"]:
            assert sample["weights_s"] > 0 and sample["total_s"] >= sample["weights_s"]
            pids.append(sample["pid"])
            parents.add(sample["ppid"])
    assert len(set(pids)) == 12  # one load per process, 12 processes
    # ... every one a child of the one fork server, not of the script
    (server,) = parents
    assert server != doc["pid"] and server not in pids
    rows = {r["library"]: r for r in doc["ratios"]}
    assert set(rows) == {"safetensors", "tensorizer"}
    for r in rows.values():
        assert r["n"] == 3 and r["ratio"] > 0 and r["ci95"][0] <= r["ratio"] <= r["ci95"][1]
        assert r["pairs"] == 3 and r["paired_ci95"][0] <= r["paired_ratio"] <= r["paired_ci95"][1]
    assert "safetensors      warm  n=3" in proc.stdout  # the summary at the end


def test_fresh_interpreters_give_the_same_document(saved_model, tmp_path):
    out = tmp_path / "fidelity.json"
    proc = _fidelity(saved_model, out, "--samples", "2", "--start", "fresh", libraries="safetensors")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["start"] == "fresh" and "a new interpreter" in doc["rule"]
    cell = doc["samples"]["safetensors|warm"]
    assert len({s["pid"] for s in cell["loadbench"] + cell["bare"]}) == 4
    assert {s["ppid"] for s in cell["loadbench"] + cell["bare"]} == {doc["pid"]}  # the script's own
    assert doc["ratios"][0]["n"] == 2


def test_a_sample_that_fails_says_which_side_and_why_and_the_run_goes_on(model_copy, tmp_path):
    # A truncated shard: loadbench's pod finds no verified trial, the bare load_file raises; both
    # are reported in one line each, with the child's own last words, and the other library runs.
    shard = next(model_copy.glob("safetensors/*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    out = tmp_path / "fidelity.json"
    proc = _fidelity(model_copy, out, "--samples", "1")
    assert proc.returncode == 0, proc.stderr
    assert "loadbench safetensors warm failed" in proc.stdout
    assert "bare safetensors warm failed" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["samples"]["safetensors|warm"] == {"loadbench": [], "bare": []}
    assert len(doc["samples"]["tensorizer|warm"]["bare"]) == 1


def test_a_sample_past_its_limit_is_killed_and_the_server_serves_the_next(saved_model):
    import importlib
    import sys

    from tests.conftest import ROOT
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        fidelity = importlib.import_module("fidelity")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    forked = fidelity.Forked(str(saved_model), "cpu")
    # 10 ms: no child imports its library and loads in that time
    with pytest.raises(RuntimeError, match=r"bare safetensors warm failed.*no result after 0 s: killed"):
        forked.sample("bare", str(saved_model), "safetensors", "warm", limit=0.01)
    sample = forked.sample("bare", str(saved_model), "safetensors", "warm", limit=120)
    assert sample["weights_s"] > 0 and sample["pid"] != os.getpid()


def test_the_bare_side_ends_with_the_whole_model_on_the_device(saved_model, monkeypatch):
    """As loadbench's loads end (models.finish): the bare side moves the whole model, buffers
    included, onto the target device before its clock stops; on a GPU the skeleton's rotary
    buffers are otherwise left on the CPU. In process, with Module.to watched."""
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location("fidelity_inproc", "benchmarks/fidelity.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    moved: list[tuple[str, tuple]] = []
    real = torch.nn.Module.to

    def to(self, *args, **kwargs):
        moved.append((type(self).__name__, args))
        return real(self, *args, **kwargs)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    sample = mod.bare(str(saved_model), "safetensors", "warm", device="cpu")
    assert sample["weights_s"] > 0
    assert ("OPTForCausalLM", ("cpu",)) in moved, moved
