"""plot_results.py on real documents from a CPU run: figures, tables, report.html and honest counts;
--help and bad arguments; hostile folders; thousands of documents."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadbench.analysis import frame as fr
from tests.conftest import ROOT, run_script

REFERENCE = sorted(fr.reference_libraries())[0]
LIBRARIES = f"safetensors,tensorizer,{REFERENCE}"


def plot(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "plot_results.py"), *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


TRIALS = 3   # per pod: one first load (the headline) and two repeats in a warm process


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory, saved_model) -> Path:
    res = tmp_path_factory.mktemp("res")
    from concurrent.futures import ThreadPoolExecutor

    def pod(mode: str, library: str) -> subprocess.CompletedProcess:
        return run_script("deserialize_benchmark.py", {
            "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(saved_model), "RES_PATH": str(res),
            "LIBRARIES": library, "NUM_TRIALS": str(TRIALS), "CACHE_MODE": mode,
            "SKIP_INFERENCE": "1", "CEILINGS": "1", "CEILING_SECONDS": "0.1"})

    # One pod (one process) per library and mode, as on a cluster. Pods that read different
    # files run two at a time (a cold pod's eviction never meets another pod's reads).
    from loadbench import loaders
    runs = []
    for mode in ("cold", "warm"):
        waiting = LIBRARIES.split(",")
        while waiting:
            batch: list[str] = []
            for lib in list(waiting):
                if len(batch) < 2 and all(loaders.get(lib).format != loaders.get(b).format for b in batch):
                    batch.append(lib)
                    waiting.remove(lib)
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                runs += list(pool.map(lambda lib: pod(mode, lib), batch))  # noqa: B023
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    # One failed run, one corrupt file, one document of another schema: counted, never dropped.
    proc = run_script("deserialize_benchmark.py", {
        "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(res / "missing"), "RES_PATH": str(res),
        "RUN_ID": "opt-tiny-cold", "LIBRARIES": "safetensors"})
    assert proc.returncode == 2
    (res / "corrupt.json").write_text('{"schema": "loadbench.result/1", "trials": [')
    (res / "future.json").write_text(json.dumps({"schema": "loadbench.result/9"}))
    return res


def _documents(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in results_dir.rglob("*.json")
            if p.parent != results_dir and "config-error" not in str(p)]


def _first_loads(doc: dict) -> list[dict]:
    """The trials the headline counts: each process's first load (recorded index 0, or, where
    a document records none, its first trial)."""
    return [t for i, t in enumerate(doc["trials"]) if t.get("index_in_process", i) == 0]


def test_plot_results_writes_figures_and_tables_that_match_the_raw_trials(results_dir, tmp_path):
    out = tmp_path / "report"
    proc = plot(str(results_dir), "--out", str(out), "--format", "png,svg")
    assert proc.returncode == 0, proc.stderr
    assert "1 with status error" in proc.stderr and "2 skipped" in proc.stderr
    assert "corrupt.json: " in proc.stderr and "loadbench.result/9" in proc.stderr
    pngs = []
    for mode in ("cold", "warm"):
        for kind in ("load-time", "throughput", "cdf", "pod-time"):
            for ext in ("png", "svg"):
                files = list(out.glob(f"*-{mode}-{kind}.{ext}"))
                assert len(files) == 1 and files[0].stat().st_size > 10_000, (mode, kind, ext)
                pngs += [f for f in files if ext == "png"]
    md = (out / "summary.md").read_text()
    assert "Tukey 1.5xIQR" in md and "corrupt.json" in md
    assert "## Which loader to pick" in md and "### Pod time" in md and "## Pod overhead" in md
    assert "reference loader takes" in md and "first-in-process trials only" in md
    # The failed run (missing checkpoint) measured nothing: listed under Errors, in no table.
    errors = md[md.index("## Errors"):]
    assert "| safetensors | safetensors | opt-tiny-cold | " in errors and "| 1 |" in errors

    docs = _documents(results_dir)
    rows = list(csv.DictReader((out / "summary.csv").open(newline="")))
    assert len(rows) == 6  # 3 libraries x 2 modes
    for row in rows:
        totals = [t["total_s"] for d in docs if d["status"] == "ok" and d["label"] == row["library"]
                  for t in _first_loads(d) if t["cache_mode"] == row["cache_mode"]]
        # NUM_TRIALS=3 in one pod: exactly one headline sample, the pod's first load.
        assert int(row["n"]) == len(totals) == 1
        assert float(row["median s"]) == pytest.approx(statistics.median(totals), abs=5e-4)
        assert float(row["mean s (Tukey)"]) == pytest.approx(statistics.mean(totals), abs=5e-4)
        assert int(row["removed"]) == 0
        assert row["verified"] == "1/1" and row["errors"] == "0"
        assert row["io mode"] != "-"
        assert row["% of ceiling"].endswith("%") or "unreliable" in md
    # The other two loads of each pod are repeats in a warm process, with their own table.
    repeats = md[md.index("## Repeat in a warm process"):md.index("## Pod overhead")]
    assert repeats.count("| 1–2 | 2 |") == 6
    for mode in ("cold", "warm"):
        def median(label: str, mode: str = mode) -> float:
            return statistics.median(t["total_s"] for d in docs if d["status"] == "ok"
                                     and d["label"] == label for t in _first_loads(d)
                                     if t["cache_mode"] == mode)
        ref = [r for r in rows if r["library"] == REFERENCE and r["cache_mode"] == mode][0]
        assert ref["× reference"] == "1.00"
        other = [r for r in rows if r["library"] == "tensorizer" and r["cache_mode"] == mode][0]
        assert float(other["× reference"]) == pytest.approx(median("tensorizer") / median(REFERENCE),
                                                           abs=0.006)

    html = (out / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    # Two pods run at once in the fixture: when their loads happen to overlap, the report has a
    # concurrent view and its timeline, embedded like the rest.
    timelines = list(out.glob("*-concurrent-timeline.png"))
    assert len(timelines) == ("overlapped in time" in md)
    assert len(embedded) == len(pngs) + len(timelines) == 8 + len(timelines)
    assert all(base64.b64decode(e).startswith(b"\x89PNG") for e in embedded)
    assert "Run metadata" in html and "Settings shared by every document" in html
    assert "plot_results.py " in html and "src=\"http" not in html  # self-contained

    # The terminal: tables, which loader to pick, and a closing summary.
    assert "Which loader to pick:" in proc.stdout and "opt-tiny on x86_64" in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert "verified loads" in last and f"wrote {(len(pngs) + len(timelines)) * 2 + 3} files" in last


def test_help_prints_and_touches_nothing(tmp_path):
    proc = plot("--help", cwd=tmp_path)
    assert proc.returncode == 0 and "exit codes" in proc.stdout and "notebook" in proc.stdout
    assert proc.stdout.startswith("usage: plot_results.py ")
    assert list(tmp_path.iterdir()) == []


def test_loadbench_report_help_names_its_own_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "loadbench", "report", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: loadbench report "), proc.stdout
    assert "plot_results.py [" not in proc.stdout and list(tmp_path.iterdir()) == []


def test_a_config_error_document_is_listed_never_a_group(results_dir, tmp_path):
    res = tmp_path / "results"
    proc = run_script("deserialize_benchmark.py", {"LIBRARIES": "tensoriser", "RES_PATH": str(res)})
    assert proc.returncode == 2, proc.stderr           # the typo: exit 2, a config-error document
    (written,) = [p for p in res.rglob("*.json")]
    assert json.loads(written.read_text())["label"] == "config-error"
    good = next(p for p in results_dir.rglob("tensorizer/*.json") if "cold" in str(p))
    shutil.copy(good, res / "good.json")
    proc = plot(str(res), "--out", str(tmp_path / "r"), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "on unknown" not in md and "on unknown" not in proc.stdout   # no group of what failed
    assert [line for line in md.splitlines() if line.startswith("## ")][:1] == ["## opt-tiny on x86_64, cold"]
    errors = md[md.index("## Errors"):]
    assert "| none | config-error | config-error | ConfigError: LIBRARIES: unknown library 'tensoriser'" \
        in errors and errors.splitlines()[6].endswith("| 1 |")
    rows = list(csv.DictReader((tmp_path / "r" / "summary.csv").open(newline="")))
    assert [(r["library"], r["cache_mode"]) for r in rows] == [("tensorizer", "cold")]
    assert "<h2>Errors</h2>" in (tmp_path / "r" / "report.html").read_text()
    assert "1 error document(s) measured nothing" in proc.stderr


@pytest.mark.parametrize("args", [[], ["--bogus", "."], ["{missing}"], [".", "--format", "gif"],
                                  [".", "--out", "{file}"], [".", "--title", "a\nb"], [".", "extra"]])
def test_bad_arguments_exit_2_and_create_nothing(tmp_path, args):
    (tmp_path / "file").write_text("x")
    argv = [a.format(missing=tmp_path / "nope", file=tmp_path / "file") for a in args]
    proc = plot(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_hostile_folders_are_listed_never_a_traceback(results_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "binary.json").write_bytes(os.urandom(256))
    (bad / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (bad / "nan.json").write_text('{"schema": "loadbench.result/2", "trials": [{"total_s": NaN}]}')
    (bad / "list.json").write_text("[1, 2, 3]")
    (bad / "empty.json").write_text("")
    doc = json.loads(next(results_dir.rglob("tensorizer/*.json")).read_text())
    doc["label"] = "$\\frac{1}{0}$"
    (bad / "mathtext.json").write_text(json.dumps(doc))
    proc = plot(str(bad), "--out", str(tmp_path / "r1"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("skipped ") == 6 and "no result documents" in proc.stderr

    ok = json.loads(next(results_dir.rglob("safetensors/*.json")).read_text())
    ok["identity"]["pod"] = "pod <script>|x"
    (bad / "ok.json").write_text(json.dumps(ok))
    proc = plot(str(bad), "--out", str(tmp_path / "r2"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "<script>" not in (tmp_path / "r2" / "report.html").read_text()


def test_plotting_1000_documents_is_fast_and_shows_progress(results_dir, tmp_path):
    src = [p for p in results_dir.rglob("*.json") if "config-error" not in str(p)
           and p.parent != results_dir]
    many = tmp_path / "many"
    for i in range(1000):
        p = src[i % len(src)]
        doc = json.loads(p.read_text())
        doc["identity"]["pod"] = f"bench-{i}"  # copies keep their times: 1000 pods at once
        dst = many / p.parent.relative_to(results_dir) / f"{i}-{p.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(doc))
    start = time.perf_counter()
    proc = plot(str(many), "--out", str(tmp_path / "r"))
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "1000 documents" in proc.stderr and "tabulating: 500 of 1000 documents" in proc.stderr
    assert "episode(s) of concurrent pods" in proc.stderr
    assert list((tmp_path / "r").glob("*-timeline.png"))
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "## Concurrent pods (scale-out)" in md
    assert elapsed < 30, f"1000 documents took {elapsed:.1f} s"  # measured ~6 s on 2 busy cores


def test_published_v1_documents_still_plot(tmp_path):
    raw = ROOT / "docs" / "results" / "2026-11-22-h200-gpt-j-6b" / "raw"
    copy = tmp_path / "raw"
    shutil.copytree(raw, copy)
    proc = plot(str(copy), "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "r").glob("*.png"))) == 6  # no pod times in schema 1: no pod figure
