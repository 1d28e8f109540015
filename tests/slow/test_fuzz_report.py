"""plot_results.py fed random and adversarial files, as a real subprocess.

Whatever a results folder holds, the report never ends in a traceback (nor in
its own "internal error" net, nor loses a figure), exits 0 when at least one
valid document is there, and lists every invalid file with a reason.

The generated folders are the same on every run (derandomized), so CI is
stable; explore further with, for example,
    LOADBENCH_FUZZ_EXAMPLES=200 LOADBENCH_FUZZ_RANDOM=1 \
        .venv/bin/python -m pytest tests/slow/test_fuzz_report.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from loadbench.schema import display, read_many
from loadbench.schema.result import problems
from tests.conftest import ROOT

EXAMPLES = int(os.environ.get("LOADBENCH_FUZZ_EXAMPLES", "6"))
RANDOM = bool(os.environ.get("LOADBENCH_FUZZ_RANDOM"))


def a_document(label: str = "safetensors", total: float = 2.5) -> dict:
    start = datetime(2026, 11, 22, 2, 40, tzinfo=timezone.utc)
    return {
        "schema": "loadbench.result/2", "status": "ok", "error": None, "library": "safetensors",
        "label": label, "options": {}, "io_mode": "page cache", "run_id": "r1",
        "identity": {"pod": "p0", "node": "n1", "hostname": "p0", "pid": 1},
        "settings": {"CACHE_MODE": "cold", "MODEL_ID": "random/opt-tiny"},
        "model": {"id": "random/opt-tiny", "name": "opt-tiny", "bytes": 1_000_000},
        "device": {"type": "cpu", "name": "x86_64"}, "versions": {"safetensors": "0.8.0"},
        "ceilings": {"storage_read": {"gbps": 2.0}, "page_cache_read": {"gbps": 20.0},
                     "h2d_pinned": {"gbps": 50.0}, "source": "measured"},
        "pod": {"process_started_at": start.isoformat(), "total_s": 9.0,
                "phases": [{"name": "startup and imports", "seconds": 2.0},
                           {"name": "trials", "seconds": 7.0}]},
        "warnings": [],
        "trials": [{"status": "ok", "cache_mode": "cold", "resident_before": 0.0, "total_s": total + i / 10,
                    "skeleton_s": 0.1, "weights_s": total - 0.1, "tensors_verified": 10, "mismatches": [],
                    "started_at": (start + timedelta(seconds=10 * i)).isoformat(),
                    "finished_at": (start + timedelta(seconds=10 * i + 5)).isoformat()} for i in range(5)],
        "started_at": start.isoformat(), "finished_at": (start + timedelta(minutes=2)).isoformat(),
    }


def run_report(folder: Path, out: Path, plots: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "plot_results.py"), str(folder), "--out", str(out)]
    if not plots:
        cmd.append("--no-plots")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def check_report(folder: Path, proc: subprocess.CompletedProcess) -> None:
    """The contract, for any folder: judged against what the schema says of each file."""
    docs, skipped = read_many(str(folder))
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err[-3000:]
    assert "internal error" not in err, err[-3000:]
    assert "could not draw" not in err, err[-3000:]
    if docs:
        assert proc.returncode == 0, err[-3000:]
    else:
        assert proc.returncode == 1, err[-3000:]
    lines = err.splitlines()
    for path, why in skipped:
        assert why and any(path in line and why[:60] in line for line in lines), (path, why, err[-3000:])


# --- adversarial, by hand -------------------------------------------------------------------

def adversarial_folder(root: Path) -> Path:
    root.mkdir()
    good = a_document()
    files = {
        "valid.json": json.dumps(good),
        "schema-null.json": json.dumps(dict(good, schema=None)),
        "schema-missing.json": json.dumps({k: v for k, v in good.items() if k != "schema"}),
        "total-string.json": json.dumps(dict(good, trials=[dict(good["trials"][0], total_s="2.5")])),
        "label-list.json": json.dumps(dict(good, label=["a", "list"])),
        "label-dollar.json": json.dumps(dict(good, label="$\\frac{a}$")),
        "nested.json": "[" * 100_000 + "]" * 100_000,
        "nested-shallow.json": json.dumps(dict(good, settings={"x": json.loads("[" * 500 + "]" * 500)})),
        "nan.json": json.dumps(dict(good, trials=[dict(good["trials"][0], total_s=math.nan)])),
        "infinity.json": json.dumps(dict(good, trials=[dict(good["trials"][0], total_s=math.inf)])),
        "negative.json": json.dumps(dict(good, trials=[dict(good["trials"][0], total_s=-1.0)])),
        "negative-resident.json": json.dumps(dict(good, trials=[dict(good["trials"][0],
                                                                      resident_before=-0.5)])),
        "zero-time.json": json.dumps(dict(good, trials=[dict(good["trials"][0], total_s=0)])),
        "huge-number.json": '{"schema": "loadbench.result/2", "x": 1' + "0" * 5000 + "}",
        "huge-bytes.json": json.dumps(dict(good, model=dict(good["model"], bytes=10**40))),
        "status-weird.json": json.dumps(dict(good, status="fine")),
        "trials-dict.json": json.dumps(dict(good, trials={"0": good["trials"][0]})),
        "ceilings-string.json": json.dumps(dict(good, ceilings={"storage_read": "fast"})),
        "binary.json": b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + os.urandom(64),
        "empty.json": "",
        "null.json": "null",
        "list.json": "[1, 2, 3]",
        "string.json": '"loadbench"',
        "truncated.json": json.dumps(good)[:200],
    }
    for name, content in files.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    os.mkfifo(root / "fifo.json")
    (root / "link.json").symlink_to(ROOT / "docs" / "results" / "2026-11-22-h200-gpt-j-6b" / "manifest.json")
    return root


@pytest.mark.parametrize("plots", [False, True], ids=["tables", "figures"])
def test_adversarial_folder_is_reported_never_crashes(tmp_path, plots):
    folder = adversarial_folder(tmp_path / "in")
    proc = run_report(folder, tmp_path / "out", plots=plots)
    check_report(folder, proc)
    docs, skipped = read_many(str(folder))
    assert [Path(d["_path"]).name for d in docs] == ["valid.json"]
    assert len(skipped) == len(list(folder.iterdir())) - 1
    reasons = {Path(p).name: why for p, why in skipped}
    assert reasons["schema-null.json"].startswith("schema: is None")
    assert reasons["total-string.json"] == "trials.0.total_s: Input should be a valid number"
    assert reasons["label-list.json"] == "label: Input should be a valid string"
    assert "nested too deeply" in reasons["nested.json"]
    assert reasons["nan.json"] == reasons["infinity.json"] \
        == "trials.0.total_s: Input should be a finite number"
    assert reasons["negative.json"].startswith("trials.0.total_s: Input should be greater than or equal to 0")
    assert reasons["link.json"] == "symbolic link, not followed"
    assert reasons["fifo.json"] == "not a regular file"
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "opt-tiny" in summary
    if plots:
        assert list((tmp_path / "out").glob("*.png"))


def test_only_invalid_files_exit_1_with_every_one_listed(tmp_path):
    folder = adversarial_folder(tmp_path / "in")
    (folder / "valid.json").unlink()
    proc = run_report(folder, tmp_path / "out")
    check_report(folder, proc)
    assert proc.returncode == 1


# --- random -----------------------------------------------------------------------------------

LINE = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="$"),
               min_size=1, max_size=40)
ANY_TEXT = st.text(max_size=30)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=12)
SECONDS = st.floats(min_value=1e-6, max_value=1e9)
BYTES = st.none() | st.integers(0, 2**63 - 1)
SMALL = st.none() | st.floats(min_value=0, max_value=1e9)
# Mostly close together (overlapping pods, one group), sometimes anywhere in two centuries.
BASE = datetime(2026, 11, 22, 2, 40, tzinfo=timezone.utc)
WHEN = st.one_of(
    st.floats(0, 600).map(lambda s: BASE + timedelta(seconds=s)),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                 timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=14)),
                                            timezone(timedelta(hours=-12, minutes=-30))])))
MODE = st.sampled_from(["cold", "warm", "asis"]) | st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
MODEL_NAME = st.sampled_from(["opt-tiny", "gpt-j-6b"]) | st.from_regex(r"[A-Za-z0-9._-]{1,100}",
                                                                    fullmatch=True)
DEVICE_NAME = st.sampled_from(["x86_64", "NVIDIA H200"]) | st.from_regex(r"[ -#%-~]{1,100}", fullmatch=True)


@st.composite
def trials(draw) -> dict:
    status = draw(st.sampled_from(["ok", "ok", "ok", "mismatch", "error"]))
    start = draw(WHEN)
    total = draw(SECONDS) if status == "ok" else draw(SMALL)
    t = {"status": status, "cache_mode": draw(st.none() | MODE),
         "resident_before": draw(st.none() | st.floats(min_value=0, max_value=1)),
         "total_s": total, "skeleton_s": draw(SMALL), "weights_s": draw(SMALL), "verify_s": draw(SMALL),
         "cache_s": draw(SMALL), "first_token_s": draw(SMALL),
         "gbps": draw(st.none() | st.floats(min_value=0, max_value=1e9)),
         "ceiling": draw(st.none() | st.sampled_from(["storage_read", "page_cache_read", "h2d_pinned"])),
         "ceiling_gbps": draw(st.none() | st.floats(min_value=0, max_value=1e9)),
         "ceiling_fraction": draw(st.none() | st.floats(min_value=0, max_value=1e9)),
         "ceiling_beaten": draw(st.none() | st.booleans()),
         "tokens_per_s": draw(st.none() | st.floats(min_value=0, max_value=1e9)),
         "tokens_per_s_runs": draw(st.none() | st.lists(st.floats(min_value=0, max_value=1e9), max_size=3)),
         "peak_rss_bytes": draw(st.none() | st.integers(0, 2**63 - 1)),
         "peak_device_bytes": draw(st.none() | st.integers(0, 2**63 - 1)),
         "tensors_verified": draw(st.none() | st.integers(0, 2**63 - 1)),
         "mismatches": draw(st.lists(st.fixed_dictionaries({"tensor": ANY_TEXT, "problem": ANY_TEXT}),
                                     max_size=2)),
         "output_ids": draw(st.none() | st.lists(st.integers(0, 2**63 - 1), max_size=4)),
         "library_info": draw(st.none() | st.dictionaries(ANY_TEXT, JSON, max_size=2)),
         "warnings": draw(st.lists(ANY_TEXT, max_size=2)),
         "error": draw(st.none() | st.fixed_dictionaries({"type": ANY_TEXT, "message": ANY_TEXT})),
         "ranks": draw(st.none() | st.lists(st.fixed_dictionaries(
             {"rank": st.integers(0, 64), "total_s": SMALL},
             optional={"bytes": BYTES, "storage_read_bytes": BYTES, "cache_read_bytes": BYTES}),
             max_size=3)),
         "index_in_process": draw(st.none() | st.integers(0, 4) | st.integers(0, 2**63 - 1)),
         "storage_read_bytes": draw(BYTES), "cache_read_bytes": draw(BYTES),
         "device_copy_bytes": draw(BYTES),
         "started_at": start.isoformat(),
         "finished_at": (start + timedelta(seconds=draw(st.floats(0, 1e6)))).isoformat()}
    if draw(st.booleans()):
        t = {k: v for k, v in t.items() if k == "status" or (k == "total_s" and status == "ok")
             or draw(st.booleans())}
    return t


def ceiling() -> st.SearchStrategy:
    return st.none() | st.fixed_dictionaries({"gbps": st.none() | st.floats(min_value=0, max_value=1e9)},
                                             optional={"method": ANY_TEXT, "bytes": st.integers(0, 2**40)})


@st.composite
def documents(draw) -> dict:
    status = draw(st.sampled_from(["ok", "ok", "error"]))
    start = draw(WHEN)
    doc = {
        "schema": draw(st.sampled_from(["loadbench.result/1", "loadbench.result/2", "loadbench.result/3"])),
        "status": status,
        "error": ({"type": draw(ANY_TEXT), "message": draw(ANY_TEXT), "where": draw(st.none() | ANY_TEXT)}
                  if status == "error" else None),
        "library": draw(st.sampled_from(["safetensors", "tensorizer", "reference", "none"]) | LINE),
        "label": draw(st.sampled_from(["safetensors", "tensorizer-numreaders16", "config-error"]) | LINE),
        "run_id": draw(st.none() | LINE),
        "io_mode": draw(st.none() | ANY_TEXT),
        "identity": {"pod": draw(st.none() | ANY_TEXT), "node": draw(st.none() | ANY_TEXT),
                     "hostname": draw(st.none() | ANY_TEXT),
                     "completion_index": draw(st.none() | st.integers(0, 9)),
                     "pid": draw(st.none() | st.integers(0, 2**31))},
        "settings": {"CACHE_MODE": draw(st.none() | MODE), "MODEL_ID": draw(st.none() | ANY_TEXT),
                     "X": draw(JSON.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))))},
        "model": draw(st.none() | st.fixed_dictionaries(
            {"bytes": st.integers(1, 2**63 - 1),
             "name": st.none() | MODEL_NAME},
            optional={"id": ANY_TEXT, "dtype": ANY_TEXT, "params": st.integers(0, 2**40)})),
        "device": draw(st.none() | st.fixed_dictionaries(
            {"name": st.none() | DEVICE_NAME},
            optional={"type": st.sampled_from(["cpu", "cuda"]), "memory_bytes": st.integers(0, 2**50)})),
        "versions": draw(st.dictionaries(ANY_TEXT, st.none() | ANY_TEXT, max_size=3)),
        "ceilings": draw(st.none() | st.fixed_dictionaries(
            {}, optional={"storage_read": ceiling(), "page_cache_read": ceiling(), "h2d_pinned": ceiling(),
                          "h2d_pageable": ceiling(), "source": st.sampled_from(["measured", "reused"]),
                          "unreliable": st.lists(ANY_TEXT, max_size=2)})),
        "pod": draw(st.none() | st.fixed_dictionaries(
            {"process_started_at": st.just(start.isoformat()), "total_s": SMALL,
             "phases": st.lists(st.fixed_dictionaries({"name": st.text(min_size=1, max_size=20),
                                                       "seconds": st.floats(0, 1e9)}), max_size=4)})),
        "tp_size": draw(st.integers(1, 16)),
        "warnings": draw(st.lists(ANY_TEXT, max_size=2)),
        "trials": draw(st.lists(trials(), max_size=6)),
        "started_at": start.isoformat(),
        "finished_at": (start + timedelta(seconds=draw(st.floats(0, 1e6)))).isoformat(),
    }
    if doc["schema"] == "loadbench.result/1":
        doc["tuning"] = draw(st.dictionaries(ANY_TEXT, st.none() | st.integers() | ANY_TEXT, max_size=2))
    else:
        doc["options"] = draw(st.dictionaries(ANY_TEXT, st.none() | st.integers(-5, 5) | ANY_TEXT,
                                              max_size=2))
    if doc["schema"] != "loadbench.result/3":   # byte counts and the index came with schema 3
        for t in doc["trials"]:
            for key in ("index_in_process", "storage_read_bytes", "cache_read_bytes", "device_copy_bytes"):
                t.pop(key, None)
    if doc["model"] is None or doc["device"] is None:  # as a run that failed before its trials
        doc["status"], doc["error"] = "error", {"type": "X", "message": "no model"}
        for t in doc["trials"]:
            t["status"] = "error" if t["status"] == "ok" else t["status"]
    return doc


@st.composite
def mutated(draw) -> dict:
    """A generated document with one part replaced by any JSON value."""
    doc = draw(documents())
    target = doc
    for _ in range(draw(st.integers(1, 3))):
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys:
            break
        key = draw(st.sampled_from(keys))
        if isinstance(target[key], (dict, list)) and target[key] and draw(st.booleans()):
            target = target[key]
            continue
        target[key] = draw(JSON)
        break
    return doc


FILES = st.one_of(
    documents().map(lambda d: json.dumps(d).encode()),
    documents().map(lambda d: json.dumps(d).encode()),
    mutated().map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
)


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
          phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is a subprocess
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(st.lists(FILES, min_size=1, max_size=25), st.booleans(), st.sampled_from([False, False, True]))
def test_random_folders_never_crash_the_report(tmp_path_factory, contents, with_valid, plots):
    folder = tmp_path_factory.mktemp("fuzz")
    for i, data in enumerate(contents):
        (folder / f"f{i:02d}.json").write_bytes(data)
    if with_valid:
        (folder / "valid.json").write_text(json.dumps(a_document()))
    proc = run_report(folder, folder / "report", plots=plots)
    try:
        check_report(folder, proc)
    except AssertionError:
        kept = [display(str(p)) for p in folder.glob("*.json")]
        print("folder:", folder, kept, "\n", proc.stderr[-5000:])
        raise


def test_the_generated_documents_are_mostly_valid():
    """The random documents must mostly pass the schema, or the fuzz would only test the reader."""
    valid = []

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(documents())
    def collect(doc):
        valid.append(not problems(doc))

    collect()
    assert sum(valid) >= 0.8 * len(valid), f"{sum(valid)} of {len(valid)} valid"
