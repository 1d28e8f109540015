"""benchmarks/fidelity.py compares every library a user picks with its bare, documented usage:
a library added to the registry without a bare implementation there fails here."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from loadbench import loaders
from tests.conftest import ROOT


def fidelity():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("fidelity")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_fidelity_covers_every_library_a_user_picks():
    mod = fidelity()
    assert set(mod.LIBS) == {lib.name for lib in loaders.LIBRARIES if lib.role != "instrument"}
    assert set(mod.BARE) == set(mod.LIBS), "a library without a bare implementation in fidelity.py"
    assert set(mod.PACKAGES) == set(mod.LIBS), "a library without its import in fidelity.PACKAGES"


PUBLISHED = ROOT / "docs/results/2026-12-03-h200-llama-2-7b-fidelity-nodecache"


def test_merge_recomputes_the_published_ratios_from_the_raw_samples(tmp_path):
    """The published fidelity file is the merge of its two calls' files: merging them again gives
    the same ratios, each computed from the samples (n = 7 a side, every median within 3%)."""
    mod = fidelity()
    calls = [str(PUBLISHED / "logs" / f"fidelity-call{i}.json") for i in (1, 2)]
    samples, meta = mod.merge(calls)
    out = tmp_path / "merged.json"
    mod.save(str(out), samples, meta)
    mine = json.loads(out.read_text())
    published = json.loads((PUBLISHED / "llama-2-7b-fidelity.json").read_text())
    # the fields the published file has (later versions add the paired ones beside them)
    assert [{k: r[k] for k in pub if k != "ci95_within_5pct"}
            for r, pub in zip(mine["ratios"], published["ratios"])] == published["ratios"]
    assert len(mine["ratios"]) == len(published["ratios"])
    # Issue 19's second target: every interval inside +-5%. With 7 samples a side none is.
    assert not any(r["ci95_within_5pct"] for r in mine["ratios"])
    assert {r["library"] for r in mine["ratios"]} == {
        "tensorizer", "safetensors", "huggingface", "instanttensor", "flashpack", "runai-streamer"}
    for r in mine["ratios"]:
        assert r["n"] >= 7 and r["within_3pct"], r


def test_merge_refuses_the_same_cell_twice_and_other_files(tmp_path):
    mod = fidelity()
    one = str(PUBLISHED / "logs" / "fidelity-call1.json")
    with pytest.raises(SystemExit, match="already in an earlier file"):
        mod.merge([one, one])
    other = tmp_path / "doc.json"
    other.write_text('{"schema": "loadbench.result/3", "samples": {}}')
    with pytest.raises(SystemExit, match="not a fidelity file"):
        mod.merge([str(other)])


def test_merge_refuses_files_whose_samples_were_measured_differently(tmp_path):
    """One merged file has one description of a sample. The six-library file's inputs share it;
    a file whose bare side ended on the device (bare_to_device), or whose samples were fresh
    interpreters, is not put beside them."""
    mod = fidelity()
    six = ROOT / "docs/results/2026-12-05-h200-llama-2-7b-fidelity-six"
    old = six / "llama-2-7b-fidelity-flashpack-runai.json"
    newer = json.loads((six / "llama-2-7b-fidelity-huggingface-instanttensor.json").read_text())
    newer["bare_to_device"] = True
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(SystemExit, match="bare_to_device is True, but False in .*flashpack-runai"):
        mod.merge([str(old), str(tmp_path / "newer.json")])
    newer.update(bare_to_device=False, start="fresh")
    (tmp_path / "fresh.json").write_text(json.dumps(newer))
    with pytest.raises(SystemExit, match="start is 'fresh', but 'forkserver'"):
        mod.merge([str(old), str(tmp_path / "fresh.json")])
    newer.update(start="forkserver", device="cpu")
    (tmp_path / "cpu.json").write_text(json.dumps(newer))
    with pytest.raises(SystemExit, match="device is 'cpu', but 'cuda'"):
        mod.merge([str(old), str(tmp_path / "cpu.json")])
    # alike in every way, and both after the change: merged
    both = []
    for name in ("flashpack-runai", "huggingface-instanttensor"):
        doc = json.loads((six / f"llama-2-7b-fidelity-{name}.json").read_text())
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(doc, bare_to_device=True)))
        both.append(str(tmp_path / f"{name}.json"))
    samples, meta = mod.merge(both)
    assert len(samples) == 4 and meta["bare_to_device"] is True
    # a file from before the fork server (no start, no device: fresh interpreters on CUDA)
    early = json.loads((PUBLISHED / "logs" / "fidelity-call1.json").read_text())
    assert "start" not in early and "device" not in early
    with pytest.raises(SystemExit, match="start is 'forkserver', but 'fresh'"):
        mod.merge([str(PUBLISHED / "logs" / "fidelity-call1.json"), str(old)])


def test_an_interval_inside_five_percent_is_said_so_and_a_wide_one_is_not():
    mod = fidelity()
    tight = [{"total_s": 1.0 + i / 1000, "skeleton_s": 0.0, "weights_s": 1.0 + i / 1000} for i in range(30)]
    wide = [{"total_s": 1.0 + i / 10, "skeleton_s": 0.0, "weights_s": 1.0 + i / 10} for i in range(7)]
    rows = {r["library"]: r for r in mod.report({
        "tensorizer|warm": {"loadbench": tight, "bare": list(reversed(tight))},
        "safetensors|warm": {"loadbench": wide, "bare": wide[1:] + wide[:1]}})}
    assert rows["tensorizer"]["ci95_within_5pct"] and rows["tensorizer"]["within_3pct"]
    assert rows["tensorizer"]["n"] == 30 and rows["tensorizer"]["ratio"] == 1.0
    assert not rows["safetensors"]["ci95_within_5pct"] and rows["safetensors"]["within_3pct"]


def test_the_fork_server_imports_nothing_that_touches_cuda(tmp_path):
    """A CUDA call in the server (even torch.cuda.is_available, which is not fork-safe) would leave
    every forked sample unable to use the GPU: the preload list calls none at import."""
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    probe = f"""
import importlib, json, sys
import torch, torch.cuda as tc
calls = []
for name in dir(tc):
    obj = getattr(tc, name)
    if callable(obj) and not isinstance(obj, type) and not name.startswith("__"):
        def wrap(*a, _o=obj, _n=name, **k):
            calls.append(_n)
            return _o(*a, **k)
        setattr(tc, name, wrap)
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import fidelity
names = fidelity.preload({str(tmp_path)!r})
for m in names:
    importlib.import_module(m)
print(json.dumps([names, sorted(set(calls))]))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    names, calls = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "transformers.models.llama.modeling_llama" in names and "loadbench.measure.run" in names
    assert set(calls) <= {"_is_compiled"}, calls  # whether torch was built with CUDA: no device call


def _samples(times: list[float], rounds: list[int] | None = None) -> list[dict[str, float]]:
    out: list[dict[str, float]] = [{"total_s": t, "skeleton_s": 0.0, "weights_s": t} for t in times]
    for x, r in zip(out, rounds or []):
        x["round"] = r
    return out


def test_the_paired_interval_takes_out_the_drift_both_sides_met():
    """Both sides slow down together round by round (the machine's drift) while loadbench is
    exactly bare's time in every round: unpaired, the drift reads as noise on both sides and the
    interval is wide; paired, the ratio is 1.000 with no width at all."""
    mod = fidelity()
    drift = [1.0 + 0.05 * i for i in range(30)]
    [row] = mod.report({"tensorizer|warm": {"loadbench": _samples(drift), "bare": _samples(drift[::-1])}})
    assert row["ratio"] == 1.0 and not row["ci95_within_5pct"]  # each side's median is the same
    assert row["pairs"] == 30 and row["paired_ratio"] != 1.0  # rounds mismatched: drift in the pairs
    [row] = mod.report({"tensorizer|warm": {"loadbench": _samples(drift), "bare": _samples(drift)}})
    assert not row["ci95_within_5pct"], row["ci95"]
    assert row["paired_ratio"] == 1.0 and row["paired_ci95"] == [1.0, 1.0] and row["paired_ci95_within_5pct"]


def test_rounds_pair_by_their_number_and_a_failed_sample_leaves_its_round_out():
    mod = fidelity()
    a = _samples([1.0, 2.0, 4.0], rounds=[0, 1, 2])
    b = _samples([1.0, 4.0], rounds=[0, 2])  # round 1's bare sample failed
    assert [(x["round"], y["round"]) for x, y in mod.pairs(a, b)] == [(0, 0), (2, 2)]
    assert mod.pairs(_samples([1.0, 2.0]), _samples([3.0, 4.0])) == list(zip(_samples([1.0, 2.0]),
                                                                            _samples([3.0, 4.0])))
    assert mod.pairs(_samples([1.0, 2.0]), _samples([3.0])) == []  # no rounds and unequal: unknown
    cell = {"loadbench": _samples([1.0, 2.0, 3.0]), "bare": _samples([3.0, 1.0])}
    [row] = mod.report({"safetensors|warm": cell})
    assert row["pairs"] == 0 and row["paired_ratio"] is None and not row["paired_ci95_within_5pct"]


def test_the_n30_file_paired_and_unpaired_as_its_readme_quotes_them(tmp_path):
    """The 2026-12-05 H200 file (n = 30 a side): unpaired, neither interval is inside +-5%;
    paired by round, both are (tensorizer 0.998, 0.976-1.037; safetensors 1.024, 0.994-1.037)."""
    mod = fidelity()
    samples, meta = mod.merge([str(ROOT / "docs/results/2026-12-05-h200-llama-2-7b-fidelity-n30"
                                   / "llama-2-7b-fidelity.json")])
    rows = {r["library"]: r for r in mod.report(samples)}
    got = {lib: (round(r["ratio"], 3), [round(x, 3) for x in r["ci95"]], round(r["paired_ratio"], 3),
                 [round(x, 3) for x in r["paired_ci95"]], r["pairs"]) for lib, r in rows.items()}
    assert got == {"tensorizer": (0.985, [0.944, 1.045], 0.998, [0.976, 1.037], 30),
                   "safetensors": (1.029, [0.991, 1.056], 1.024, [0.994, 1.037], 30)}, got


def test_the_six_library_file_is_its_three_inputs_merged_and_says_what_its_readme_quotes(tmp_path):
    """docs/results/2026-12-05-h200-llama-2-7b-fidelity-six: the merged file is what `--merge`
    makes of its three inputs (each library in one input only), and its README's table holds:
    every ratio within +-3% both ways; paired, every interval inside +-5% but flashpack's."""
    mod = fidelity()
    run = ROOT / "docs/results/2026-12-05-h200-llama-2-7b-fidelity-six"
    inputs = [ROOT / "docs/results/2026-12-05-h200-llama-2-7b-fidelity-n30/llama-2-7b-fidelity.json",
              run / "llama-2-7b-fidelity-huggingface-instanttensor.json",
              run / "llama-2-7b-fidelity-flashpack-runai.json"]
    samples, _ = mod.merge([str(p) for p in inputs])
    published = json.loads((run / "llama-2-7b-fidelity.json").read_text())
    assert published["samples"] == samples
    assert published["ratios"] == mod.report(samples)
    got = {r["library"]: (r["n"], round(r["loadbench_weights_median_s"], 3),
                          round(r["bare_weights_median_s"], 3), round(r["ratio"], 3),
                          [round(x, 3) for x in r["ci95"]], round(r["paired_ratio"], 3),
                          [round(x, 3) for x in r["paired_ci95"]])
           for r in published["ratios"]}
    assert got == {  # the README's table, column for column
        "tensorizer": (30, 1.198, 1.216, 0.985, [0.944, 1.045], 0.998, [0.976, 1.037]),
        "safetensors": (30, 2.951, 2.868, 1.029, [0.991, 1.056], 1.024, [0.994, 1.037]),
        "huggingface": (30, 2.080, 2.073, 1.003, [0.987, 1.018], 1.001, [0.984, 1.012]),
        "instanttensor": (30, 0.344, 0.337, 1.023, [1.010, 1.036], 1.025, [1.003, 1.035]),
        "flashpack": (30, 1.072, 1.054, 1.017, [0.967, 1.071], 1.005, [0.988, 1.051]),
        "runai-streamer": (30, 2.234, 2.285, 0.978, [0.938, 1.022], 0.999, [0.969, 1.026])}, got
    assert all(r["within_3pct"] and r["paired_within_3pct"] for r in published["ratios"])
    assert [r["library"] for r in published["ratios"] if not r["paired_ci95_within_5pct"]] == ["flashpack"]
