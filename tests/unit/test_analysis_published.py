"""The published H200 run regenerates its summary.csv with the same numbers, cell by cell."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loadbench.analysis import cli, summary
from tests.conftest import ROOT

PUBLISHED = ROOT / "docs" / "results" / "2026-11-22-h200-gpt-j-6b"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("published")
    assert cli.main([str(PUBLISHED / "raw"), "--out", str(out), "--no-plots"]) == 0
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_published_cell_is_regenerated(regenerated):
    old = _rows(PUBLISHED / "summary.csv")
    new = _rows(regenerated / "summary.csv")
    assert len(new) == len(old) == 14
    # The 16 columns published on 2026-11-22; later columns are appended, never inserted.
    old_columns = ["model", "device", "cache_mode", "library", "version", "n", "median s",
                   "mean s (Tukey)", "removed", "p5 s", "p95 s", "GB/s", "% of ceiling", "tokens/s",
                   "verified", "errors"]
    with (regenerated / "summary.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header[:len(old_columns)] == old_columns
    assert header[len(old_columns):] == list(summary.NEW_COLUMNS)
    for a, b in zip(old, new):
        for column in old_columns:
            assert b[column] == a[column], (a["cache_mode"], a["library"], column)


def test_the_published_report_reads_whole(regenerated):
    md = (regenerated / "summary.md").read_text()
    assert md.count("| library | version | n | median s |") == 2  # no empty io mode, × reference columns
    assert "## Which loader to pick" in md
    assert "cold on this storage, gpt-j-6b on NVIDIA H200: **fastsafetensors**" in md
    assert "at 89% of the storage read ceiling" in md and "1.21× faster than huggingface" in md
    html = (regenerated / "report.html").read_text()
    assert "NVIDIA H200" in html and "torch" in html and "Run metadata" in html
    assert "data:image/png" not in html  # --no-plots: tables only
