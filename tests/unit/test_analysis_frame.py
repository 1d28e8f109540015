"""The trial frame: one row per trial, group keys flattened, runs that differ kept apart.

`make_doc` builds schema-valid loadbench.result/3 documents in memory (or /2, which
record no index in the process), and `pods` one document per load, each its own pod
as on a cluster; the other test_analysis modules use them too.
"""

from __future__ import annotations

import ast
import copy
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from loadbench import loaders
from loadbench.analysis import frame as fr
from loadbench.schema.result import TRIAL_KEYS, problems

T0 = datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc)
GB = 10**9


def make_doc(library: str = "tensorizer", totals: tuple[float, ...] = (1.0, 1.1, 0.9),
             mode: str = "warm", resident: float | None = None, label: str | None = None,
             pod: str = "pod-0", start: float = 0.0, settings: dict[str, Any] | None = None,
             ceilings: dict[str, float] | None = None, status: str = "ok",
             nbytes: int = 2 * GB, device: str = "NVIDIA H200", io_mode: str | None = "page cache",
             first_token: float | None = 0.05, run_id: str = "run-a", schema: int = 3,
             first_index: int = 0) -> dict[str, Any]:
    """A loadbench.result/3 document of one pod; trial k starts `start + 10 k` seconds after T0
    and was its process's load number `first_index + k` (schema 2: not recorded)."""
    if resident is None:
        resident = 0.0 if mode == "cold" else 1.0
    trials = []
    for k, total in enumerate(totals):
        began = T0 + timedelta(seconds=start + 10 * k)
        trials.append({
            "status": "ok", "cache_mode": mode, "resident_before": resident, "skeleton_s": 0.01,
            "weights_s": total - 0.01, "total_s": total, "gbps": nbytes / total / 1e9,
            "peak_rss_bytes": 1, "peak_device_bytes": 1, "tensors_verified": 3, "mismatches": [],
            "first_token_s": first_token, "tokens_per_s": 30.0 + k, "verify_s": 0.2, "cache_s": 0.1,
            "started_at": began.isoformat(),
            "finished_at": (began + timedelta(seconds=total + 1)).isoformat()})
        if schema >= 3:
            trials[-1]["index_in_process"] = first_index + k
    base = {"MODEL_ID": "random/gpt-j-6b", "MODEL_PATH": "/data/m", "DTYPE": "float16", "NUM_TRIALS":
            len(totals), "RUN_ID": run_id, "CACHE_MODE": mode, "POD_NAME": pod, "RES_PATH": "/r",
            "LIBRARIES": [library], "DEVICE_RESOLVED": "cuda:0"}
    doc = {
        "schema": f"loadbench.result/{schema}", "status": status, "error": None, "library": library,
        "label": label or library, "options": {}, "io_mode": io_mode, "run_id": run_id,
        "identity": {"pod": pod, "node": "node-1", "hostname": pod, "pid": 7},
        "settings": {**base, **(settings or {})},
        "model": {"id": "random/gpt-j-6b", "name": "gpt-j-6b", "bytes": nbytes, "dtype": "float16"},
        "device": {"type": "cuda", "name": device},
        "versions": {"torch": "2.11.0", "python": "3.12.3",
                     loaders.BY_NAME[library].package if library in loaders.BY_NAME else library: "1.0"},
        "ceilings": ({name: {"gbps": v} for name, v in ceilings.items()} | {"source": "measured"}
                     if ceilings else None),
        "pod": {"process_started_at": (T0 + timedelta(seconds=start - 5)).isoformat(),
                "phases": [{"name": "startup and imports", "seconds": 3.0},
                           {"name": "device init", "seconds": 1.0},
                           {"name": "prepare", "seconds": 0.5},
                           {"name": "trials", "seconds": sum(totals) + 1}],
                "total_s": 6.0 + sum(totals)},
        "warnings": [], "trials": trials,
        "started_at": (T0 + timedelta(seconds=start - 1)).isoformat(),
        "finished_at": (T0 + timedelta(seconds=start + 10 * len(totals) + 5)).isoformat(),
    }
    if status == "error":
        doc["error"] = {"type": "BadInput", "message": "the checkpoint folder is missing", "where": "x"}
        doc["model"] = doc["device"] = None
        doc["trials"] = []
    assert problems(doc) == [], problems(doc)
    return doc


def pods(library: str = "tensorizer", totals: tuple[float, ...] = (1.0, 1.1, 0.9), pod: str = "pod",
         start: float = 0.0, **kw: Any) -> list[dict[str, Any]]:
    """One document per load, each from its own pod (one process, one first load), 10 s apart."""
    return [make_doc(library, (t,), pod=f"{pod}-{k}", start=start + 10 * k, **kw)
            for k, t in enumerate(totals)]


def test_one_row_per_trial_with_flat_keys():
    df = fr.frame([make_doc(), make_doc("safetensors", totals=(2.0, 2.2))])
    assert len(df) == 5
    for col in ("model", "device", "cache_state", "row", "label", "library", "io_mode", "version",
                "run_id", "node", "pod", "status", "total_s", "gbps", "resident_before",
                "ceiling_fraction", "first_token_s", "load_first_token_s", "tokens_per_s", "pod_total_s"):
        assert col in df.columns, col
    assert df["model"].eq("gpt-j-6b").all() and df["device"].eq("NVIDIA H200").all()
    assert df["version"].eq("1.0").all()
    row = df[df["library"] == "safetensors"].iloc[0]
    assert row["gbps"] == pytest.approx(1.0) and row["load_first_token_s"] == pytest.approx(2.05)
    assert str(df["started_at"].dtype).startswith("datetime64")
    assert df["pod_startup_and_imports_s"].eq(3.0).all()
    assert df["index_in_process"].tolist() == [0, 1, 2, 0, 1] and df["tp_size"].eq(1).all()


def test_index_in_process_is_recorded_else_the_position_in_the_document():
    recorded = make_doc("safetensors", (1.0, 1.0), first_index=3)   # the pod's second library
    old = make_doc(totals=(1.0, 1.0, 1.0), schema=2, pod="pod-b")
    df = fr.frame([recorded, old, make_doc(status="error", pod="pod-c")])
    assert df["index_in_process"].tolist()[:5] == [3, 4, 0, 1, 2]
    assert pd.isna(df["index_in_process"].iloc[5])    # a document without trials
    assert str(df["index_in_process"].dtype) == "Int64"


def test_trial_columns_follow_the_schema_and_keep_their_places():
    df = fr.frame([make_doc()])
    assert list(df.columns[:len(fr.COLUMNS)]) == list(fr.COLUMNS)   # published positions
    assert list(df.columns[-len(fr.LATER_COLUMNS):]) == list(fr.LATER_COLUMNS)
    assert set(fr.PLAIN_TRIAL) <= set(TRIAL_KEYS)
    assert set(fr.PUBLISHED_TRIAL) - fr.DERIVED_TRIAL <= set(TRIAL_KEYS)   # none renamed in the schema
    assert {"index_in_process", "storage_read_bytes", "cache_read_bytes", "device_copy_bytes"} \
        <= set(fr.LATER_TRIAL)
    assert "ranks" not in fr.PLAIN_TRIAL and "mismatches" not in fr.PLAIN_TRIAL  # lists, read apart


def test_tp_ranks_keep_their_bytes():
    doc = make_doc(totals=(1.0,), settings={"TP_SIZE": 2})
    doc["tp_size"] = 2
    doc["trials"][0]["ranks"] = [{"rank": r, "bytes": GB, "storage_read_bytes": 2 * GB,
                                  "cache_read_bytes": 0, "total_s": 1.0} for r in (0, 1)]
    assert problems(doc) == []
    row = fr.frame([doc]).iloc[0]
    assert row["tp_size"] == 2 and [r["rank"] for r in row["ranks"]] == [0, 1]
    assert row["ranks"][1]["storage_read_bytes"] == 2 * GB and row["ranks"][0]["bytes"] == GB


def test_a_document_without_trials_is_one_error_row_in_its_models_group():
    df = fr.frame([make_doc(mode="cold"), make_doc(status="error", mode="cold")])
    err = df[df["doc_status"] == "error"]
    assert len(err) == 1 and pd.isna(err["trial"].iloc[0]) and err["status"].iloc[0] == "error"
    assert err["device"].iloc[0] == "NVIDIA H200" and err["cache_state"].iloc[0] == "cold"
    assert "checkpoint folder is missing" in err["doc_error"].iloc[0]


@pytest.mark.parametrize("resident, state", [(0.0, "cold"), (0.049, "cold"), (0.05, "partial"),
                                             (0.5, "partial"), (0.95, "partial"), (0.951, "warm"),
                                             (1.0, "warm")])
def test_cache_state_is_measured_not_requested(resident, state):
    df = fr.frame([make_doc(mode="cold", resident=resident)])
    assert df["cache_state"].eq(state).all() and df["cache_mode"].eq("cold").all()


@pytest.mark.parametrize("cache, role, state", [("none", None, "object storage, warm"),
                                                ("node", "hit", "cold"),
                                                ("node", "filled", "object storage, warm"),
                                                ("node", "waited", "object storage, warm")])
def test_a_load_from_object_storage_keeps_the_mode_it_was_run_in(cache, role, state):
    """Read from a bucket (no node cache), the local residency is 0% whatever the server had
    cached: the mode the pod was run in (the server's state) places it. A node cache hit reads
    local files, and their residency decides as for any local load; a trial that filled the
    cache (or waited for another pod to) read the bucket inside its load."""
    doc = make_doc(mode="warm", resident=0.0)
    doc["source"] = {"uri": "s3://bucket/m", "cache": cache, "read": "native", "endpoint": None,
                     "credentials": "env"}
    if role:
        for t in doc["trials"]:
            t["library_info"] = {"fetch": {"role": role}}
    df = fr.frame([doc])
    assert df["cache_state"].eq(state).all(), df["cache_state"].tolist()


def test_identity_and_other_libraries_options_never_split_a_label():
    a = make_doc(pod="pod-a", settings={"JOB_COMPLETION_INDEX": 0, "NODE_NAME": "n1", "POD_UID": "u1",
                                        "FST_MAX_THREADS": [4], "CEILINGS": "reuse"})
    b = make_doc(pod="pod-b", run_id="run-b",
                 settings={"JOB_COMPLETION_INDEX": 3, "NODE_NAME": "n2", "POD_UID": "u2",
                           "FST_MAX_THREADS": [8], "RES_PATH": "/elsewhere", "CEILINGS": "measure",
                           "SKIP_INFERENCE": True, "LIBRARIES": ["tensorizer", "safetensors"]})
    df = fr.frame([a, b])
    assert df["settings_key"].nunique() == 1 and df["row"].eq("tensorizer").all()
    assert (df["settings_variant"] == "").all()


def test_documents_whose_settings_differ_are_kept_apart_and_named():
    a = make_doc(settings={"NUM_TRIALS": 3})
    b = make_doc(settings={"NUM_TRIALS": 5}, pod="pod-b")
    c = copy.deepcopy(b)
    c["options"] = {"num_readers": 16}
    df = fr.frame([a, b, c])
    assert df["row"].nunique() == 3
    assert set(df["settings_variant"]) == {"NUM_TRIALS=3, option num_readers=unset",
                                           "NUM_TRIALS=5, option num_readers=unset",
                                           "NUM_TRIALS=5, option num_readers=16"}
    assert df["row"].str.startswith("tensorizer [").all()
    differ = fr.differing_settings(df["settings_key"])
    assert differ == {"NUM_TRIALS": ["3", "5"], "option num_readers": ["16", "unset"]}


def test_library_roles_come_from_the_registry():
    assert fr.reference_libraries() == {lib.name for lib in loaders.LIBRARIES if lib.role == "instrument"}
    base = fr.baseline_library()
    assert base is not None and loaders.BY_NAME[base].role == "baseline"
    assert fr.package(base) == loaders.BY_NAME[base].package
    assert fr.package("not-a-library") == "not-a-library"
    assert set(loaders.SKIP_VARS) <= fr.ignored_settings() and loaders.SKIP_VARS


def test_a_registered_librarys_skip_variable_never_splits_a_label():
    toy = loaders.Library("toy-loader", "tests.toy", "safetensors", "toy", False, "a toy",
                          skip="SKIP_TOY")
    loaders.register(toy)
    try:
        assert "SKIP_TOY" in fr.ignored_settings()
        a, b = make_doc(settings={"SKIP_TOY": True}), make_doc(pod="pod-b", settings={"SKIP_TOY": False})
        assert fr.frame([a, b])["settings_variant"].eq("").all()
    finally:
        loaders.unregister("toy-loader")
    assert "SKIP_TOY" not in fr.ignored_settings()


def test_analysis_code_never_spells_a_library_name():
    names = set(loaders.NAMES)
    for path in sorted((Path(fr.__file__).parent).glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert node.value not in names, f"{path.name}:{node.lineno} spells {node.value!r}"


def test_hostile_values_become_missing_never_an_exception():
    doc = make_doc()
    doc["trials"][0].update(total_s="fast", resident_before=float("nan"), tokens_per_s=float("inf"),
                            first_token_s=-1, mismatches="many", started_at="yesterday")
    doc["trials"].append("not a trial")
    doc["pod"]["phases"].append({"name": 5, "seconds": "x"})
    doc["model"]["bytes"] = True
    doc["settings"]["MODEL_ID"] = {"odd": ["value"]}
    df = fr.frame([doc, "not a document", {}])
    t = df[df["trial"] == 0].iloc[0]
    assert math.isnan(t["total_s"]) and math.isnan(t["tokens_per_s"]) and math.isnan(t["first_token_s"])
    assert pd.isna(t["started_at"]) and t["cache_state"] == "warm"  # the requested mode, unmeasured
    assert len(df[df["doc"] == 0]) == 3


def test_phases_keep_the_order_pods_ran_them():
    a = make_doc()
    b = make_doc(pod="pod-b")
    b["pod"]["phases"].insert(2, {"name": "ceilings", "seconds": 2.0})
    df = fr.frame([a, b])
    assert list(df.attrs["phases"].values()) == ["startup and imports", "device init", "ceilings",
                                                 "prepare", "trials", "earlier libraries in the pod"]
    assert df[df["pod"] == "pod-a"]["pod_ceilings_s"].eq(0).all()
    assert df["pod_earlier_s"].min() >= 0


def test_load_lists_skipped_files(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "bad.json").write_text("{")
    df = fr.load(tmp_path)
    assert df.empty and df.attrs["skipped"][0][0].endswith("bad.json")
