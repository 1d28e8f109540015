"""The typed schema: published documents validate, hostile ones get per-field reasons, and
reading a folder never raises, whatever it holds."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadbench import schema
from loadbench.schema import manifest as manifests
from loadbench.schema import other_kind
from loadbench.schema import result as results
from loadbench.schema.__main__ import FILES, render
from tests.conftest import ROOT

# Result documents only: a run's node ceilings files (raw/<run>/ceilings/) are another kind.
PUBLISHED = sorted(p for p in (ROOT / "docs" / "results").glob("*/raw/**/*.json")
                   if other_kind(json.loads(p.read_text())) is None)
CEILING_FILES = sorted(p for p in (ROOT / "docs" / "results").glob("*/raw/**/*.json") if p not in PUBLISHED)
MANIFESTS = sorted((ROOT / "docs" / "results").glob("*/manifest.json"))
SCHEMA_DIR = ROOT / "docs" / "schema"


def v2_document() -> dict:
    """A complete v2 document, as the producer writes one."""
    return {
        "schema": "loadbench.result/2", "status": "ok", "error": None, "library": "tensorizer",
        "label": "tensorizer-numreaders16", "options": {"num_readers": 16},
        "io_mode": "page cache, 16 readers", "run_id": "gpt-j-6b-cold",
        "identity": {"job": "bench", "completion_index": 0, "pod": "bench-0-abc", "pod_uid": "u",
                     "node": "n1", "namespace": "ns", "hostname": "bench-0-abc", "pid": 1},
        "settings": {"CACHE_MODE": "cold", "MODEL_ID": "random/gpt-j-6b", "LIBRARIES": ["tensorizer"]},
        "model": {"id": "random/gpt-j-6b", "name": "gpt-j-6b", "bytes": 12_101_765_568, "params": 6},
        "device": {"type": "cuda", "name": "NVIDIA H200", "index": 0, "memory_bytes": 150_109_880_320},
        "versions": {"torch": "2.11.0", "tensorizer": "2.12.1", "fastsafetensors": None},
        "machine": {"cpu_count": 16},
        "ceilings": {"storage_read": {"gbps": 1.9, "bytes": 10, "seconds": 1.0, "method": "O_DIRECT",
                                      "spread": {"min_gbps": 1.8, "max_gbps": 2.0, "tries": 4}},
                     "page_cache_read": {"gbps": 38.0}, "h2d_pinned": {"gbps": 54.0},
                     "h2d_pageable": {"gbps": None, "method": "not measured"},
                     "source": "reused", "node": "n1", "unreliable": ["storage_read"]},
        "pod": {"process_started_at": "2026-11-22T02:39:50.000+00:00", "total_s": 40.0,
                "phases": [{"name": "startup/imports", "seconds": 3.1},
                           {"name": "device_init", "seconds": 0.5}, {"name": "ceilings", "seconds": 8.0},
                           {"name": "trials", "seconds": 28.0}, {"name": "write", "seconds": 0.01}]},
        "tp_size": 2, "warnings": [],
        "trials": [{
            "status": "ok", "cache_mode": "cold", "resident_before": 0.0, "skeleton_s": 0.1,
            "weights_s": 7.4, "total_s": 7.5, "verify_s": 0.2, "gbps": 1.6, "ceiling": "storage_read",
            "ceiling_gbps": 1.9, "ceiling_fraction": 0.84, "ceiling_beaten": False, "first_token_s": 0.05,
            "tokens_per_s": 19.7, "tokens_per_s_runs": [19.5, 19.9], "peak_rss_bytes": 2_000_000,
            "peak_device_bytes": 12_117_344_256, "tensors_verified": 285, "mismatches": [],
            "library_info": {"readers": 16, "nested": {"a": [1, 2]}}, "output_ids": [1, 2, 3],
            "warnings": [], "error": None,
            "ranks": [{"rank": 0, "total_s": 7.5, "tensors_verified": 143},
                      {"rank": 1, "total_s": 7.4, "tensors_verified": 142}],
            "started_at": "2026-11-22T02:40:18.196+00:00", "finished_at": "2026-11-22T02:40:28.388+00:00"}],
        "started_at": "2026-11-22T02:39:53.712+00:00", "finished_at": "2026-11-22T02:40:28.653+00:00",
    }


# --- published documents and the exported files --------------------------------------------

def test_every_published_document_validates():
    assert len(PUBLISHED) >= 160 and MANIFESTS and CEILING_FILES
    assert all(p.parent.name == "ceilings" for p in CEILING_FILES)
    for path in PUBLISHED:
        assert results.problems(json.loads(path.read_text())) == [], path
    for path in MANIFESTS:
        assert manifests.problems(json.loads(path.read_text())) == [], path


def test_every_published_document_validates_against_the_exported_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    result_schema = json.loads((SCHEMA_DIR / "result.schema.json").read_text())
    manifest_schema = json.loads((SCHEMA_DIR / "manifest.schema.json").read_text())
    for s in (result_schema, manifest_schema):
        jsonschema.Draft202012Validator.check_schema(s)
    check = jsonschema.Draft202012Validator(result_schema)
    for doc in [json.loads(p.read_text()) for p in PUBLISHED] + [v2_document()]:
        assert not list(check.iter_errors(doc))
    assert list(check.iter_errors(dict(v2_document(), status="maybe")))
    for path in MANIFESTS:
        assert not list(jsonschema.Draft202012Validator(manifest_schema).iter_errors(
            json.loads(path.read_text())))


def test_the_committed_schema_files_are_the_generated_ones(tmp_path):
    for name, make in FILES.items():
        assert (SCHEMA_DIR / name).read_text() == render(make), \
            f"docs/schema/{name} is stale: run python -m loadbench.schema --export docs/schema"
    proc = subprocess.run([sys.executable, "-m", "loadbench.schema", "--export", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    for name in FILES:
        assert (tmp_path / name).read_text() == (SCHEMA_DIR / name).read_text()


def test_history_names_every_version_and_the_reader_accepts_them():
    assert results.SCHEMA == "loadbench.result/3" and results.READABLE[0] == "loadbench.result/1"
    for version in results.READABLE:
        assert version in results.__doc__
    assert results.LOG_PREFIX == "LOADBENCH_RESULT "


def test_a_complete_v2_document_validates():
    assert results.problems(v2_document()) == []


def test_v3_declares_what_a_producer_writes_and_the_key_lists_follow_the_models():
    doc = dict(v2_document(), schema="loadbench.result/3")
    doc["trials"][0].update(index_in_process=0, storage_read_bytes=10, cache_read_bytes=0,
                            device_copy_bytes=10)
    assert results.problems(doc) == []
    doc["trials"][0]["index_in_process"] = -1
    assert results.problems(doc) == ["trials.0.index_in_process: Input should be greater than or "
                                     "equal to 0"]
    assert set(results.TRIAL_KEYS) == set(results.Trial.model_fields)
    assert {"storage_read_bytes", "barrier_s", "node"} <= set(results.RANK_KEYS)


def test_the_producers_document_validates_once_it_has_a_model_and_device():
    from loadbench.measure import document
    doc = document.new_document("safetensors", "safetensors", {}, None, {"RUN_ID": "r1"})
    assert results.problems(doc) == [
        "document: an ok document, or one with ok trials, needs model and device"]
    doc.update(model={"bytes": 10, "name": "opt-tiny"}, device={"type": "cpu", "name": "x86_64"})
    from loadbench.measure.trial import new_trial
    trial = new_trial("cold")  # the producer's own empty trial
    trial.update(total_s=0.5, started_at=document.now(), finished_at=document.now())
    doc["trials"].append(trial)
    assert results.problems(doc) == []
    assert results.problems(json.loads(document.log_line(doc)[len(results.LOG_PREFIX):])) == []


# --- per-field reasons ----------------------------------------------------------------------

def mutate(path: str, value):
    doc = v2_document()
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for p in parents:
        target = target[p]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return doc


@pytest.mark.parametrize("path, value, reason", [
    ("schema", None, "schema: is None; this reader understands loadbench.result/1, loadbench.result/2, "
     "loadbench.result/3"),
    ("schema", "loadbench.result/9", "schema: is 'loadbench.result/9'"),
    ("status", "fine", "status: Input should be 'ok' or 'error'"),
    ("trials.0.status", "great", "trials.0.status: Input should be 'ok', 'mismatch' or 'error'"),
    ("trials.0.total_s", "1.5", "trials.0.total_s: Input should be a valid number"),
    ("trials.0.total_s", math.nan, "trials.0.total_s: Input should be a finite number"),
    ("trials.0.total_s", math.inf, "trials.0.total_s: Input should be a finite number"),
    ("trials.0.total_s", -1.0, "trials.0.total_s: Input should be greater than or equal to 0"),
    ("trials.0.total_s", None, "trials.0: an ok trial needs total_s"),
    ("trials.0.total_s", 0, "trials.0: an ok trial needs total_s"),
    ("trials.0.total_s", True, "trials.0.total_s: Input should be a valid number"),
    ("trials.0.skeleton_s", -0.1, "trials.0.skeleton_s: Input should be greater than or equal to 0"),
    ("trials.0.verify_s", 1e300, "trials.0.verify_s: Input should be less than or equal to"),
    ("trials.0.resident_before", 1.5, "trials.0.resident_before: Input should be less than or equal to 1"),
    ("trials.0.resident_before", -0.5, "trials.0.resident_before: Input should be greater than or equal"),
    ("trials.0.gbps", math.inf, "trials.0.gbps: Input should be a finite number"),
    ("trials.0.peak_rss_bytes", 10**30, "trials.0.peak_rss_bytes: Input should be less than or equal"),
    ("trials.0.output_ids", [1, "2"], "trials.0.output_ids.1: Input should be a valid integer"),
    ("trials.0.ceiling_beaten", "no", "trials.0.ceiling_beaten: Input should be a valid boolean"),
    ("trials.0.first_token_s", -1, "trials.0.first_token_s: Input should be greater than or equal to 0"),
    ("trials.0.tokens_per_s_runs", [1.0, math.nan], "trials.0.tokens_per_s_runs.1: Input should be a finite"),
    ("trials.0.ranks.1.rank", -1, "trials.0.ranks.1.rank: Input should be greater than or equal to 0"),
    ("trials.0.started_at", "yesterday", "trials.0.started_at: should be an ISO 8601 date and time"),
    ("trials.0.started_at", "2026-11-22T02:40:18", "trials.0.started_at: should carry a UTC offset"),
    ("trials.0.started_at", "2027-01-01T00:00:00+00:00", "trials.0: finished_at is before started_at"),
    ("trials.0.cache_mode", ["cold"], "trials.0.cache_mode: Input should be a valid string"),
    ("trials.0.mismatches", [{"tensor": "w"}], "trials.0.mismatches.0.problem: Field required"),
    ("trials", "none", "trials: Input should be a valid list"),
    ("trials", KeyError, "trials: Field required"),
    ("label", ["a", "list"], "label: Input should be a valid string"),
    ("label", "a\nb", "label: should be one line of text"),
    ("label", "$\\frac$", "label: should be one line of text without control characters or '$'"),
    ("label", "", "label: should not be empty"),
    ("label", "x" * 201, "label: should have at most 200 characters"),
    ("library", 3, "library: Input should be a valid string"),
    ("run_id", 7, "run_id: Input should be a valid string"),
    ("run_id", ["r"], "run_id: Input should be a valid string"),
    ("identity", None, "identity: Input should be a valid dictionary"),
    ("model.bytes", "12", "model.bytes: Input should be a valid integer"),
    ("model.name", "../x", "model.name: should use only letters, digits"),
    ("model.bytes", 0, "model.bytes: Input should be greater than or equal to 1"),
    ("model", None, "document: an ok document, or one with ok trials, needs model and device"),
    ("device.name", "é" * 10, "device.name: should be printable ASCII"),
    ("settings.CACHE_MODE", 1, "settings.CACHE_MODE: Input should be a valid string"),
    ("error", {"type": "X"}, "error.message: Field required"),
    ("status", "error", "document: a document with status error needs an error object"),
    ("device", None, "document: an ok document, or one with ok trials, needs model and device"),
    ("options", {"a": {"b": 1}}, "options.a: should be a string, a finite number, a boolean or null"),
    ("options", KeyError, "options: Field required"),
    ("tp_size", 0, "tp_size: Input should be greater than or equal to 1"),
    ("ceilings.storage_read", "fast", "ceilings.storage_read: Input should be a valid dictionary"),
    ("ceilings.storage_read.gbps", "fast", "ceilings.storage_read.gbps: Input should be a valid number"),
    ("ceilings.storage_read.spread.min_gbps", -1, "ceilings.storage_read.spread.min_gbps: Input should be"),
    ("ceilings.extra", {"gbps": "x"}, "ceilings.extra: gbps: Input should be a valid number"),
    ("ceilings.source", "guessed", "ceilings.source: Input should be 'measured' or 'reused'"),
    ("pod.phases.0.seconds", -3, "pod.phases.0.seconds: Input should be greater than or equal to 0"),
    ("pod.process_started_at", 5, "pod.process_started_at: Input should be a valid string"),
    ("settings.deep", json.loads("[" * 70 + "]" * 70), "settings.deep.0.0.0.0"),
    ("machine.x", math.nan, "machine.x: Input should be a finite number"),
])
def test_problems_name_the_field_and_the_reason(path, value, reason):
    found = results.problems(mutate(path, value))
    assert any(p.startswith(reason) for p in found), found


def test_v1_documents_keep_their_tuning_and_need_no_options():
    doc = json.loads(PUBLISHED[0].read_text())
    assert doc["schema"] == "loadbench.result/1" and "options" not in doc
    assert results.problems(doc) == []
    assert results.problems(dict(doc, tuning={"x": [1]})) == [
        "tuning.x: should be a string, a finite number, a boolean or null"]


def test_problems_are_few_one_line_and_never_raise_on_hostile_values():
    hostile: list = [None, 1, "x", [], {}, b"bytes", {1: 2}, {"schema": {"a": 1}}, set(), object()]
    deep: list = []
    cursor = deep
    for _ in range(100_000):
        cursor.append([])
        cursor = cursor[0]
    hostile += [deep, {"schema": "loadbench.result/2", "trials": deep}, mutate("settings.x", deep)]
    many = v2_document()
    many["trials"] = [dict(many["trials"][0], total_s="x") for _ in range(5000)]
    hostile += [many, mutate("trials.0.output_ids", list(range(1_000_000))),
                mutate("trials.0.library_info", {"\n" * 1000: 1, "k": math.nan}),
                mutate("label", "x" * 10_000_000), mutate("trials.0.total_s", 10**4000)]
    for doc in hostile:
        found = results.problems(doc)
        assert isinstance(found, list) and len(found) <= results.MAX_PROBLEMS + 1
        assert all(isinstance(p, str) and "\n" not in p and len(p) < 500 for p in found), found
    assert results.problems(many)[-1] == f"... and {5000 - results.MAX_PROBLEMS} more"


def test_manifest_problems():
    good = json.loads(MANIFESTS[0].read_text())
    assert manifests.problems(good) == [] and manifests.MANIFEST == "manifest.json"
    bad = copy.deepcopy(good)
    bad["formats"]["bin"]["files"][0]["name"] = "../../etc/passwd"
    bad["formats"]["safetensors"]["files"][0]["name"] = ".."
    bad["formats"]["tensorizer"]["files"][0]["bytes"] = -1
    bad["tensors"]["lm_head.bias"]["shape"] = ["x"]
    found = manifests.problems(bad)
    for expected in ("formats.bin.files.0.name: should be a plain file name",
                     "formats.safetensors.files.0.name: should name a file, not '.' or '..'",
                     "formats.tensorizer.files.0.bytes: Input should be greater than or equal to 0",
                     "tensors.'lm_head.bias'.shape.0: Input should be a valid integer"):
        assert any(p.startswith(expected) for p in found), found
    assert "formats.tensorizer.save_s.0: Input should be a finite number" in manifests.problems(
        dict(copy.deepcopy(good), formats={"tensorizer": dict(good["formats"]["tensorizer"],
                                                               save_s=[math.nan])}))
    assert manifests.problems([]) == ["document: is a JSON list, not an object"]
    assert manifests.problems({"schema": manifests.MANIFEST_SCHEMA})[0].endswith("Field required")


# --- reading a folder of anything -----------------------------------------------------------

def test_read_many_reads_v1_tuning_as_options_and_skips_what_is_not_a_document(tmp_path):
    v1 = next(d for d in (json.loads(p.read_text()) for p in PUBLISHED)
              if d["schema"] == "loadbench.result/1" and d["tuning"])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "v1.json").write_text(json.dumps(v1))
    (tmp_path / "a" / "v2.json").write_text(json.dumps(v2_document()))
    (tmp_path / "manifest.json").write_text(MANIFESTS[0].read_text())      # left out silently
    (tmp_path / "a" / "ceilings").mkdir()                                  # so is a node's ceilings file
    (tmp_path / "a" / "ceilings" / "n1.json").write_text(json.dumps(
        {"node": "n1", "device": "cuda:0", "ceilings": {}, "measured_by": "p0", "measured_at": None}))
    (tmp_path / "a" / "ceilings" / "n2.json").write_text(json.dumps({"schema": "loadbench.ceilings/1"}))
    (tmp_path / "a" / ".tmp-half.json").write_text("{")                   # a write in progress
    (tmp_path / "notes.txt").write_text("not json")
    docs, skipped = schema.read_many(str(tmp_path))
    assert skipped == []
    by_name = {Path(d["_path"]).name: d for d in docs}
    assert by_name["v1.json"]["options"] == v1["tuning"] and by_name["v1.json"]["tuning"] == v1["tuning"]
    assert by_name["v2.json"]["options"] == {"num_readers": 16}
    assert sorted(schema.iter_files(str(tmp_path))) == [
        str(tmp_path / "a" / "ceilings" / "n1.json"), str(tmp_path / "a" / "ceilings" / "n2.json"),
        str(tmp_path / "a" / "v1.json"), str(tmp_path / "a" / "v2.json"), str(tmp_path / "manifest.json")]


def test_read_many_never_raises_and_never_follows_links_out_of_the_folder(tmp_path):
    root = tmp_path / "results"
    (root / "r").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps(v2_document()))
    (root / "r" / "good.json").write_text(json.dumps(v2_document()))
    (root / "r" / "link.json").symlink_to(outside / "secret.json")
    (root / "r" / "inner-link.json").symlink_to(root / "r" / "good.json")  # would count it twice
    (root / "r" / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "r" / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    os.mkfifo(root / "r" / "fifo.json")
    (root / "r" / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "r" / "digits.json").write_text('{"schema": "loadbench.result/2", "x": 1' + "0" * 5000 + "}")
    (root / "r" / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    (root / "r" / "empty.json").write_text("")
    (root / "r" / "nan.json").write_text(json.dumps(mutate("trials.0.total_s", math.nan)))
    with open(root / "r" / "huge.json", "wb") as f:
        f.truncate(schema.MAX_BYTES + 1)
    odd = os.fsencode(str(root / "r")) + b"/\xff\xfe-odd.json"
    with open(odd, "w") as f:
        f.write(json.dumps(v2_document()))
    (root / "r" / "new\nline.json").write_text(json.dumps(v2_document()))
    docs, skipped = schema.read_many(str(root))
    assert [Path(d["_path"]).name for d in docs] == ["good.json"]
    reasons = {Path(p).name: why for p, why in skipped}
    assert reasons["link.json"] == reasons["inner-link.json"] == reasons["dangling.json"] \
        == "symbolic link, not followed"
    assert reasons["dirlink"] == "symbolic link to a folder, not followed"
    assert reasons["fifo.json"] == "not a regular file"
    assert reasons["deep.json"] == "not valid JSON: nested too deeply to parse"
    assert reasons["digits.json"].startswith("not valid JSON")
    assert reasons["binary.json"].startswith("not valid UTF-8")
    assert reasons["empty.json"].startswith("not valid JSON")
    assert reasons["nan.json"] == "trials.0.total_s: Input should be a finite number"
    assert "larger than 64 MiB" in reasons["huge.json"]
    assert reasons["\\xff\\xfe-odd.json"] == reasons["new\\nline.json"] \
        == "name is not valid UTF-8 or has control characters"
    assert len(skipped) == 13
    for path, why in skipped:  # every line prints and encodes
        assert "\n" not in path + why
        (path + why).encode("utf-8")


# --- properties ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=4),
    max_leaves=30)
PATHS = st.sampled_from(["schema", "status", "label", "library", "run_id", "options", "identity",
                         "model", "model.bytes", "model.name", "device", "device.name", "ceilings",
                         "ceilings.storage_read", "ceilings.storage_read.gbps", "trials", "trials.0",
                         "trials.0.status", "trials.0.total_s", "trials.0.resident_before",
                         "trials.0.started_at", "trials.0.output_ids", "trials.0.ranks",
                         "trials.0.library_info", "pod", "pod.phases", "settings.CACHE_MODE", "error",
                         "warnings", "tp_size"])


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_problems_never_raise_on_any_json(value):
    assert isinstance(results.problems(value), list)
    assert isinstance(manifests.problems(value), list)


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(PATHS, JSON), min_size=1, max_size=3))
def test_a_document_the_models_accept_also_matches_the_exported_json_schema(changes):
    jsonschema = pytest.importorskip("jsonschema")
    doc = v2_document()
    for path, value in changes:
        try:
            doc = _set(doc, path, value)
        except (KeyError, IndexError, TypeError):
            continue
    found = results.problems(doc)
    assert isinstance(found, list)
    if not found:
        exported = json.loads((SCHEMA_DIR / "result.schema.json").read_text())
        assert not list(jsonschema.Draft202012Validator(exported).iter_errors(doc))


def _set(doc: dict, path: str, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for p in parents:
        target = target[p]
    target[last] = value
    return doc
