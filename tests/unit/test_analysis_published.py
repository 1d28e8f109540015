"""The published runs regenerate: summary.md and summary.csv byte for byte, the first
published columns cell by cell, and the numbers the results READMEs quote."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from loadbench.analysis import cli, summary
from tests.conftest import ROOT

RESULTS = ROOT / "docs" / "results"
H200 = RESULTS / "2026-11-22-h200-gpt-j-6b"
H100 = RESULTS / "2026-11-23-h100-llama-2-7b"
H200_POD = RESULTS / "2026-12-03-h200-llama-2-7b"  # the first run whose pods cost under 8 s
H200_S3 = RESULTS / "2026-12-03-h200-llama-2-7b-s3"  # the first from object storage (SeaweedFS)
H200_CACHE = RESULTS / "2026-12-03-h200-llama-2-7b-fidelity-nodecache"  # node cache, reference shapes
H200_WARM = RESULTS / "2026-12-03-h200-llama-2-7b-warm-n4"  # 12 configurations warm, 4-6 trials, fio


def _title(run: Path) -> str:
    """The --title of the command the run's README says made its report."""
    found = re.search(r'--title "([^"]+)"', (run / "README.md").read_text())
    assert found, run
    return found[1]


@pytest.fixture(scope="module", params=[H200, H100, H200_POD, H200_S3, H200_CACHE, H200_WARM],
                ids=["h200", "h100", "h200-pods", "h200-s3", "h200-nodecache", "h200-warm"])
def regenerated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, Path]:
    run: Path = request.param
    out = tmp_path_factory.mktemp(run.name)
    assert cli.main([str(run / "raw"), "--out", str(out), "--title", _title(run), "--no-plots"]) == 0
    return run, out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_summaries_regenerate_byte_for_byte(regenerated):
    run, out = regenerated
    for name in ("summary.md", "summary.csv"):
        assert (out / name).read_bytes() == (run / name).read_bytes(), (run.name, name)


# Medians each run's README quotes, and how many summary rows it has.
QUOTED = {H200: (14, {("cold", "fastsafetensors"): "7.045", ("warm", "tensorizer"): "1.693"}),
          H100: (24, {("cold", "reference"): "7.762", ("cold", "tensorizer-numreaders16"): "7.922",
                      ("warm", "instanttensor-backendURING_BUFFERED"): "0.922",
                      ("warm", "reference"): "0.900"}),
          H200_POD: (24, {("cold", "fastsafetensors"): "6.679", ("cold", "reference"): "7.760",
                          ("warm", "instanttensor-backendURING_BUFFERED"): "0.361",
                          ("warm", "reference"): "0.776"}),
          H200_S3: (32, {("object storage, warm", "tensorizer-numreaders16"): "3.696",
                         ("object storage, warm", "runai-streamer"): "4.537",
                         ("object storage, warm", "reference"): "6.525",
                         ("object storage, cold", "tensorizer-numreaders16"): "8.225",
                         ("object storage, cold", "reference"): "8.482",
                         ("object storage, warm", "safetensors"): "16.573",
                         ("cold", "tensorizer-numreaders16"): "7.232", ("cold", "reference"): "7.670",
                         ("warm", "reference"): "0.659", ("warm", "reference-pinREGISTER"): "0.627",
                         ("warm", "instanttensor-backendURING_BUFFERED"): "0.366"}),
          H200_CACHE: (14, {("object storage, warm", "tensorizer-numreaders16"): "3.464",
                            ("object storage, warm", "runai-streamer"): "3.957",
                            ("object storage, warm", "reference"): "4.567",
                            ("object storage, cold", "tensorizer-numreaders16"): "7.976",
                            ("object storage, cold", "runai-streamer"): "8.764",
                            ("object storage, cold", "reference"): "8.926",
                            ("object storage, cold", "safetensors"): "14.757",
                            ("cold", "safetensors"): "8.169",
                            ("warm", "instanttensor-backendURING_BUFFERED"): "0.360",
                            ("warm", "reference"): "0.685",
                            ("warm", "reference-threads12-chunkbytes8388608-buffers24-pinREGISTER"):
                                "0.491"}),
          H200_WARM: (12, {("warm", "instanttensor-backendURING_BUFFERED"): "0.390",
                           ("warm", "reference"): "0.550", ("warm", "fastsafetensors-odirect0"): "0.559",
                           ("warm", "flashpack"): "1.088", ("warm", "tensorizer"): "1.179",
                           ("warm", "tensorizer-numreaders16"): "1.523", ("warm", "huggingface"): "2.267",
                           ("warm", "runai-streamer"): "2.278", ("warm", "huggingface-bin"): "2.306",
                           ("warm", "safetensors"): "2.872", ("warm", "fastsafetensors"): "7.962",
                           ("warm", "instanttensor"): "9.666"})}


def test_every_first_published_cell_is_regenerated(regenerated):
    run, out = regenerated
    old = _rows(run / "summary.csv")
    new = _rows(out / "summary.csv")
    count, quoted = QUOTED[run]
    assert len(new) == len(old) == count
    # The 16 columns published on 2026-11-22; later columns are appended, never inserted.
    old_columns = ["model", "device", "cache_mode", "library", "version", "n", "median s",
                   "mean s (Tukey)", "removed", "p5 s", "p95 s", "GB/s", "% of ceiling", "tokens/s",
                   "verified", "errors"]
    with (out / "summary.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[:len(old_columns)] == old_columns
    assert header[len(old_columns):] == list(summary.NEW_COLUMNS)
    for a, b in zip(old, new):
        for column in old_columns:
            assert b[column] == a[column], (a["cache_mode"], a["library"], column)
    # The numbers the run's README quotes. Every document of both runs holds one trial, its
    # pod's first load, so the first-in-process rule keeps every one of them.
    medians = {(r["cache_mode"], r["library"]): r["median s"] for r in new}
    assert {k: medians[k] for k in quoted} == quoted


def test_the_published_report_reads_whole(regenerated):
    run, out = regenerated
    md = (out / "summary.md").read_text()
    assert "## Which loader to pick" in md and "first-in-process trials only" in md
    assert "## Repeat in a warm process" not in md and "## Errors" not in md  # one trial per pod
    html = (out / "report.html").read_text()
    assert "torch" in html and "Run metadata" in html
    assert "data:image/png" not in html  # --no-plots: tables only
    if run == H200:
        assert md.count("| library | version | n | median s |") == 2  # no empty io mode, × reference
        assert "cold on this storage, gpt-j-6b on NVIDIA H200: **fastsafetensors**" in md
        assert "at 89% of the storage read ceiling" in md and "1.21× faster than huggingface" in md
        assert "## Pod overhead" not in md     # schema 1 recorded no pod time
    elif run == H200_S3:
        # Its README: loads from a bucket in groups of their own, graded against the GET ceiling.
        assert "## llama-2-7b on NVIDIA H200, object storage, warm" in md
        assert "Binding for this state: GET from object storage 4.09 GB/s." in md
        assert "| tensorizer-numreaders16 | stream_io from http://127.0.0.1:48125" in md
    elif run == H200_CACHE:
        # Its README: a GET ceiling that tensorizer's curl readers beat is flagged, never a limit;
        # the node cache's filled and waited pods are loads from the bucket, its hit a local one.
        assert ("The binding one, GET from object storage, is unreliable (beaten by 3.98 GB/s), so no "
                "% of ceiling is shown.") in md
        assert "- safetensors: pooled from run ids llama-2-7b-s3-herd, llama-2-7b-s3-nodecache" in md
        assert "Median outside the timed loads: 6.065 s over 41 pod(s)." in md
    elif run == H200_WARM:
        # Its README: 7.07 s per pod outside the loads, 55 pods; the storage ceiling from fio.
        assert "Median outside the timed loads: 7.066 s over 55 pod(s)." in md
        assert "storage read 1.67." in md and "pinned host-to-device 54.62" in md
    elif run == H200_POD:
        # Its README quotes 5.96 s per pod outside the timed loads over 67 pods (16.68 s before).
        assert "Median outside the timed loads: 5.961 s over 67 pod(s)." in md
        assert ("| outside the timed loads (pod total − timed loads) | 5.961 | 67 | 5.797 | 36 | 6.857 "
                "| 31 |") in md
    else:
        # Issue 19 quotes this run: a median of 17.2 s per pod outside the timed loads, 93 pods.
        assert "Median outside the timed loads: 17.234 s over 93 pod(s)." in md
        assert "| outside the timed loads (pod total − timed loads) | 17.234 | 93 |" in md
        assert "<h2>Pod overhead</h2>" in html


def test_every_curve_of_a_twelve_library_cdf_is_told_apart():
    """The published warm run has 12 rows: the default colour cycle of ten gave instanttensor's
    two backends one look. Each curve now has its own colour and line style."""
    from loadbench import schema
    from loadbench.analysis import figures, frame, groups

    docs, skipped = schema.read_many(str(RESULTS / "2026-12-03-h200-llama-2-7b-warm-n4" / "raw"))
    assert not skipped
    (g,) = groups.build(frame.frame(docs))
    fig = figures.cdf(g)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 12
    looks = {(str(line.get_color()), line.get_linestyle()) for line in lines}
    assert len(looks) == 12, sorted(looks)


def test_a_linked_report_shows_the_figure_files_beside_it(tmp_path):
    """--link-figures: report.html names the PNGs written beside it, and embeds none (a published
    folder in git kept each figure twice, 6 of its 18 MB)."""
    import re as _re

    run = RESULTS / "2026-12-03-h200-llama-2-7b-warm-n4"
    assert cli.main([str(run / "raw"), "--out", str(tmp_path), "--title", "t", "--link-figures"]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "data:image" not in html
    shown = _re.findall(r'<img alt="[^"]*" src="([^"]+)"', html)
    assert sorted(shown) == sorted(p.name for p in tmp_path.glob("*.png")) and len(shown) == 4
    assert (run / "report.html").read_text().count('src="llama-2-7b-NVIDIA-H200-warm-') == 4
