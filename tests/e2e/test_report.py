"""plot_results.py on real documents from a CPU run: figures, tables, and honest counts."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadbench.analysis import stats
from tests.conftest import ROOT, run_script


def test_tukey_fences_on_hand_made_samples():
    kept, removed = stats.tukey([1.0, 1.1, 0.9, 1.0, 1.05, 9.0])
    assert removed == 1 and 9.0 not in kept
    s = stats.summarize([1.0, 1.1, 0.9, 1.0, 1.05, 9.0])
    assert s["tukey_removed"] == 1 and s["tukey_mean"] == pytest.approx(1.01)
    assert s["median"] == pytest.approx(1.025) and s["n"] == 6
    assert stats.summarize([2.0, 2.0, 2.0])["tukey_removed"] == 0
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5 and stats.percentile([5], 95) == 5


def test_warnings_for_few_runs_and_large_spread():
    assert any("only 2 run(s)" in w for w in stats.warnings(stats.summarize([1, 2]), "x"))
    noisy = stats.warnings(stats.summarize([1, 1, 1, 1, 2]), "x")
    assert any("unstable" in w for w in noisy)
    assert stats.warnings(stats.summarize([1.0, 1.01, 0.99, 1.0, 1.0]), "x") == []


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, saved_model) -> Path:
    res = tmp_path_factory.mktemp("res")
    for mode in ("cold", "warm"):
        proc = run_script("deserialize_benchmark.py", {
            "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(saved_model), "RES_PATH": str(res),
            "LIBRARIES": "safetensors,tensorizer", "NUM_TRIALS": "5", "CACHE_MODE": mode,
            "SKIP_INFERENCE": "1", "CEILINGS": "1", "CEILING_SECONDS": "0.1"})
        assert proc.returncode == 0, proc.stderr
    # One failed run, one corrupt file, one document of another schema: counted, never dropped.
    proc = run_script("deserialize_benchmark.py", {
        "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(res / "missing"), "RES_PATH": str(res),
        "RUN_ID": "opt-tiny-cold", "LIBRARIES": "safetensors"})
    assert proc.returncode == 2
    (res / "corrupt.json").write_text('{"schema": "loadbench.result/1", "trials": [')
    (res / "future.json").write_text(json.dumps({"schema": "loadbench.result/9"}))
    return res


def test_plot_results_writes_figures_and_tables_that_match_the_raw_trials(results_dir, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(ROOT / "plot_results.py"), str(results_dir),
                           "--out", str(out), "--format", "png,svg"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "1 with status error" in proc.stderr and "2 skipped" in proc.stderr
    assert "corrupt.json: unreadable" in proc.stderr and "loadbench.result/9" in proc.stderr
    for mode in ("cold", "warm"):
        for kind in ("load-time", "throughput", "cdf"):
            for ext in ("png", "svg"):
                files = list(out.glob(f"*-{mode}-{kind}.{ext}"))
                assert len(files) == 1 and files[0].stat().st_size > 10_000, (mode, kind, ext)
    md = (out / "summary.md").read_text()
    assert "Tukey 1.5xIQR" in md and "error document" in md and "corrupt.json" in md

    docs = [json.loads(p.read_text()) for p in results_dir.rglob("*.json")
            if p.parent != results_dir and "config-error" not in str(p)]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4  # 2 libraries x 2 modes
    for row in rows:
        totals = [t["total_s"] for d in docs if d["status"] == "ok" and d["label"] == row["library"]
                  for t in d["trials"] if t["cache_mode"] == row["cache_mode"]]
        assert int(row["n"]) == len(totals) == 5
        assert float(row["median s"]) == pytest.approx(statistics.median(totals), abs=5e-4)
        q1, _, q3 = statistics.quantiles(totals, n=4, method="inclusive")
        kept = [v for v in totals if q1 - 1.5 * (q3 - q1) <= v <= q3 + 1.5 * (q3 - q1)]
        assert float(row["mean s (Tukey)"]) == pytest.approx(statistics.mean(kept), abs=5e-4)
        assert int(row["removed"]) == 5 - len(kept)
        assert row["verified"] == "5/5"
        assert row["% of ceiling"].endswith("%")
    error_rows = [r for r in rows if r["library"] == "safetensors" and r["cache_mode"] == "cold"]
    assert error_rows[0]["errors"] == "1"


def test_plotting_1000_documents_is_fast(results_dir, tmp_path):
    src = [p for p in results_dir.rglob("*.json") if "config-error" not in str(p)
           and p.parent != results_dir]
    many = tmp_path / "many"
    for i in range(1000):
        p = src[i % len(src)]
        dst = many / p.parent.relative_to(results_dir) / f"{i}-{p.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "plot_results.py"), str(many), "--out",
                           str(tmp_path / "r")], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "1000 documents" in proc.stderr
    # Copies share their timestamps, so loads overlap in time: the timeline figure is drawn.
    assert list((tmp_path / "r").glob("*-timeline.png"))
    assert elapsed < 20, f"1000 documents took {elapsed:.1f} s"  # measured ~4 s; CI headroom
