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
H200_ALL = RESULTS / "2026-12-04-h200-llama-2-7b"  # 12 configurations, 5 warm and 2-3 cold trials
H200_RING = RESULTS / "2026-12-04-h200-llama-2-7b-reference-ring"  # the reference's ring, n = 15
H200_COLD = RESULTS / "2026-12-04-h200-llama-2-7b-cold-n5"  # 13 configurations, 5 cold and 3-4 warm
H100_COLD = RESULTS / "2026-12-05-h100-llama-2-7b-cold-n5"  # 11 configurations, 5 cold and 1-2 warm
H200_TRIM = RESULTS / "2026-12-05-h200-llama-2-7b-reference-trim"  # the reference level with IT warm


def _title(run: Path) -> str:
    """The --title of the command the run's README says made its report."""
    found = re.search(r'--title "([^"]+)"', (run / "README.md").read_text())
    assert found, run
    return found[1]


@pytest.fixture(scope="module", params=[H200, H100, H200_POD, H200_S3, H200_CACHE, H200_WARM, H200_ALL,
                                        H200_RING, H200_COLD, H100_COLD, H200_TRIM],
                ids=["h200", "h100", "h200-pods", "h200-s3", "h200-nodecache", "h200-warm", "h200-all",
                     "h200-ring", "h200-cold", "h100-cold", "h200-trim"])
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
                           ("warm", "instanttensor"): "9.666"}),
          H200_ALL: (24, {("warm", "instanttensor-backendURING_BUFFERED"): "0.362",
                          ("warm", "reference"): "0.493", ("warm", "fastsafetensors-odirect0"): "0.553",
                          ("warm", "flashpack"): "1.025", ("warm", "tensorizer"): "1.185",
                          ("warm", "tensorizer-numreaders16"): "1.442", ("warm", "huggingface"): "1.983",
                          ("warm", "huggingface-bin"): "2.068", ("warm", "runai-streamer"): "2.116",
                          ("warm", "safetensors"): "2.527", ("warm", "fastsafetensors"): "5.686",
                          ("warm", "instanttensor"): "7.790",
                          ("cold", "instanttensor-backendURING_BUFFERED"): "8.347",
                          ("cold", "reference"): "8.054", ("cold", "fastsafetensors-odirect0"): "7.817",
                          ("cold", "flashpack"): "8.115", ("cold", "tensorizer"): "7.768",
                          ("cold", "tensorizer-numreaders16"): "7.844", ("cold", "huggingface"): "9.305",
                          ("cold", "huggingface-bin"): "9.473", ("cold", "runai-streamer"): "7.709",
                          ("cold", "safetensors"): "8.799", ("cold", "fastsafetensors"): "6.773",
                          ("cold", "instanttensor"): "8.912"}),
          H200_RING: (3, {("warm", "instanttensor-backendURING_BUFFERED"): "0.373",
                          ("warm", "reference"): "0.533", ("warm", "reference-pinSLOTS"): "0.454"}),
          H200_COLD: (26, {("cold", "runai-streamer"): "8.554", ("cold", "tensorizer"): "8.864",
                           ("cold", "fastsafetensors"): "8.929", ("cold", "tensorizer-numreaders16"): "8.944",
                           ("cold", "fastsafetensors-odirect0"): "9.001", ("cold", "flashpack"): "9.261",
                           ("cold", "reference-direct1"): "9.827", ("cold", "reference"): "9.853",
                           ("cold", "huggingface-bin"): "9.905",
                           ("cold", "instanttensor-backendURING_BUFFERED"): "9.972",
                           ("cold", "instanttensor"): "10.236", ("cold", "safetensors"): "10.652",
                           ("cold", "huggingface"): "10.886",
                           ("warm", "instanttensor-backendURING_BUFFERED"): "0.390",
                           ("warm", "reference"): "0.517", ("warm", "fastsafetensors-odirect0"): "0.552",
                           ("warm", "flashpack"): "1.047", ("warm", "tensorizer"): "1.234",
                           ("warm", "tensorizer-numreaders16"): "1.584", ("warm", "huggingface"): "2.138",
                           ("warm", "huggingface-bin"): "2.302", ("warm", "runai-streamer"): "2.568",
                           ("warm", "safetensors"): "2.924", ("warm", "fastsafetensors"): "9.546",
                           ("warm", "instanttensor"): "10.336", ("warm", "reference-direct1"): "10.906"}),
          H100_COLD: (22, {("cold", "fastsafetensors"): "6.904", ("cold", "tensorizer"): "7.479",
                           ("cold", "runai-streamer"): "7.929", ("cold", "fastsafetensors-odirect0"): "8.006",
                           ("cold", "flashpack"): "8.272",
                           ("cold", "instanttensor-backendURING_BUFFERED"): "8.553",
                           ("cold", "instanttensor"): "8.887", ("cold", "huggingface"): "9.094",
                           ("cold", "huggingface-bin"): "9.107", ("cold", "reference"): "9.204",
                           ("cold", "safetensors"): "9.343",
                           ("warm", "instanttensor-backendURING_BUFFERED"): "0.436",
                           ("warm", "reference"): "0.474", ("warm", "fastsafetensors-odirect0"): "0.571",
                           ("warm", "flashpack"): "0.979", ("warm", "tensorizer"): "1.181",
                           ("warm", "runai-streamer"): "2.204", ("warm", "huggingface-bin"): "2.630",
                           ("warm", "huggingface"): "2.786", ("warm", "safetensors"): "3.555",
                           ("warm", "fastsafetensors"): "8.703", ("warm", "instanttensor"): "9.151"}),
          H200_TRIM: (6, {("warm", "reference"): "0.351",
                          ("warm", "instanttensor-backendURING_BUFFERED"): "0.361",
                          ("warm", "reference-chunkbytes16777216"): "0.438",
                          ("cold", "fastsafetensors"): "7.314", ("cold", "reference"): "8.114",
                          ("cold", "instanttensor-backendURING_BUFFERED"): "9.023"})}


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
    elif run == H200_ALL:
        # Its README: 5.06 s per pod outside the loads over 94 pods; a storage ceiling the disk beat.
        assert "Median outside the timed loads: 5.061 s over 94 pod(s)." in md
        assert "storage read 2.25 (unreliable: beaten, best observed 2.67)" in md
        assert "pinned host-to-device 55.20" in md and "page-cache read 84.41" in md
    elif run == H200_RING:
        # Its README: 5.07 s per pod over 45 pods; the faster reference is the × reference base.
        assert "Median outside the timed loads: 5.068 s over 45 pod(s)." in md
        assert "Reference (loadbench's instrument, not a product): 0.454 s median" in md
    elif run == H200_COLD:
        # Its README: 6.64 s per pod over 107 pods, cold 6.65 and warm 6.62; the storage ceiling
        # beaten, so no cold % of it; the cold line is the faster of the reference's two modes.
        assert "Median outside the timed loads: 6.635 s over 107 pod(s)." in md
        assert ("| outside the timed loads (pod total − timed loads) | 6.635 | 107 | 6.649 | 65 | 6.622 "
                "| 42 |") in md
        assert "storage read 1.67 (unreliable: beaten, best observed 1.80)" in md
        assert "Reference (loadbench's instrument, not a product): 9.827 s median" in md
        assert "runner-up tensorizer at +4%" in md
    elif run == H100_COLD:
        # Its README: 5.85 s per pod over 74 pods (cold 5.64, warm 6.41), against 17.23 s on the
        # 2026-11-23 H100 run; the storage ceiling from the built-in tries (the carried fio had no
        # libaio), not beaten: fastsafetensors reached 94% of it.
        assert "Median outside the timed loads: 5.847 s over 74 pod(s)." in md
        assert ("| outside the timed loads (pod total − timed loads) | 5.847 | 74 | 5.635 | 55 | 6.406 "
                "| 19 |") in md
        assert "storage read 2.08. Binding for this state: storage read 2.08 GB/s." in md
        assert "| 6.904 | 6.809 | 1 | 6.577 | 7.380 | 1.95 | 94% |" in md
    elif run == H200_TRIM:
        # Its README: the reference (0.351 s) no longer behind InstantTensor buffered (0.361 s) warm, the
        # pick taking 1.03x the reference's time; 5.55 s per pod over 30 pods.
        assert "Median outside the timed loads: 5.552 s over 30 pod(s)." in md
        assert "Reference (loadbench's instrument, not a product): 0.351 s median" in md
        assert "loadbench's reference loader takes 0.351 s (the pick takes 1.03× as long)" in md
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


def test_a_second_reference_configuration_is_a_row_of_its_own_in_every_figure():
    """The ring run has two reference configurations: the faster is the dashed line, the other
    was left out of the box and bar figures altogether (its 15 loads shown nowhere)."""
    from loadbench import schema
    from loadbench.analysis import figures, frame, groups

    docs, skipped = schema.read_many(str(H200_RING / "raw"))
    assert not skipped
    (g,) = groups.build(frame.frame(docs))
    for draw in (figures.load_times, figures.throughput):
        ax = draw(g).axes[0]
        ticks = [t.get_text().split("\n")[0] for t in ax.get_yticklabels()]
        assert sorted(ticks) == ["instanttensor-", "reference"], (draw.__name__, ticks)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[0].startswith("loadbench reference loader (reference-pinSLOTS), "), legend
    lines = figures.cdf(g).axes[0].get_lines()
    dashed = [line.get_label() for line in lines if line.get_linestyle() == "--"]
    assert dashed == ["reference-pinSLOTS (n=15), loadbench's instrument"]
    assert len(lines) == 3
