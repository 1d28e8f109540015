"""plot_results' command line in process: progress while reading, the notebook API, the last net."""

from __future__ import annotations

import time

import pytest

from loadbench import schema
from loadbench.analysis import cli, load, summary, table
from tests.conftest import ROOT

RAW = ROOT / "docs" / "results" / "2026-11-22-h200-gpt-j-6b" / "raw"


def test_reading_a_slow_folder_prints_periodic_lines(monkeypatch, tmp_path):
    def slow(root):
        time.sleep(0.3)
        return [], [("x.json", "unreadable")]
    monkeypatch.setattr(schema, "read_many", slow)
    lines: list[str] = []
    docs, skipped = cli.read(str(tmp_path), lines.append, every=0.05)
    assert docs == [] and skipped == [("x.json", "unreadable")]
    assert lines[0].startswith("reading 0 JSON file(s)")
    assert sum(line.startswith("still reading") for line in lines) >= 2


def test_a_reader_that_fails_is_one_line(monkeypatch, tmp_path):
    def broken(root):
        raise PermissionError("denied")
    monkeypatch.setattr(schema, "read_many", broken)
    lines: list[str] = []
    assert cli.read(str(tmp_path), lines.append) == ([], [])
    assert lines[-1] == f"could not read {tmp_path}: PermissionError: denied"


def test_an_internal_error_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    def boom(df):
        raise ValueError("odd\ninput")
    monkeypatch.setattr(summary, "build", boom)
    assert cli.main([str(RAW), "--out", str(tmp_path / "r"), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ValueError: odd input (at test_analysis_cli.py:" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"], ["-h"]])
def test_help_exits_0(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    out = capsys.readouterr().out
    assert e.value.code == 0 and "exit codes" in out and out.startswith("usage: plot_results.py ")


def test_loadbench_report_names_itself(monkeypatch, capsys):
    import loadbench.cli as top
    monkeypatch.setattr(top, "PROG_OVERRIDE", [])   # what `loadbench report` records, undone after
    with pytest.raises(SystemExit) as e:
        top.main(["report", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: loadbench report ")
    with pytest.raises(SystemExit) as e:
        top.main(["report", "--bogus"])
    assert e.value.code == 2 and "usage: loadbench report " in capsys.readouterr().err
    assert cli.prog_name(None) == "plot_results.py"   # the script, run as itself


def test_the_report_records_the_command_that_made_it(tmp_path):
    assert cli.main([str(RAW), "--out", str(tmp_path), "--no-plots"], prog="loadbench report") == 0
    assert f"loadbench report {RAW} --out {tmp_path} --no-plots" in (tmp_path / "report.html").read_text()


def test_the_notebook_lines_work():
    df = load(RAW)                      # the three lines of the README and of --help
    rows = table(df)
    assert len(df) == 73 and df.attrs["skipped"] == []
    assert len(rows) == 14 and {"median_s", "p5_s", "p95_s", "tukey_mean_s", "x_reference",
                                "ceiling_fraction", "io_mode", "cache_state"} <= set(rows.columns)
    fast = rows[rows["cache_state"] == "warm"].sort_values("median_s").iloc[0]
    assert fast["row"] == "tensorizer" and round(fast["median_s"], 3) == 1.693
