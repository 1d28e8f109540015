"""End to end: the real entry points, in subprocesses, on a real opt-tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadbench import loaders, schema
from loadbench.schema.result import SCHEMA
from tests.conftest import FORMAT_LIBRARIES, ROOT, result_lines, run_script

# Every library list here comes from the registry.
CORE = list(loaders.DEFAULT)                                               # the default run
CPU = [lib.name for lib in loaders.LIBRARIES if not lib.needs_cuda]        # all that load on a CPU
OWNERS = FORMAT_LIBRARIES.split(",")                                       # each saved format's writer


def weights(model: Path, library: str) -> Path:
    """The (first) weights file the library reads, from the checkpoint's manifest."""
    fmt = loaders.get(library).format
    files = json.loads((model / "manifest.json").read_text())["formats"][fmt]["files"]
    return model / fmt / next(f["name"] for f in files if f["weights"])


def bench(model: Path, res: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(model), "RES_PATH": str(res),
            "MAX_NEW_TOKENS": "4"}
    return run_script("deserialize_benchmark.py", {**base, **env})


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


def docs_under(res: Path) -> list[dict]:
    docs, skipped = schema.read_many(str(res))
    assert not skipped, skipped
    return docs


def test_every_cpu_library_cold_load_verified_and_agree(saved_model, tmp_path):
    proc = bench(saved_model, tmp_path / "res", CACHE_MODE="cold", NUM_TRIALS="2",
                 LIBRARIES=",".join(CPU), INFERENCE_RUNS="2")
    assert proc.returncode == 0, proc.stderr
    docs = docs_under(tmp_path / "res")
    assert sorted(d["library"] for d in docs) == sorted(CPU)
    assert [d["library"] for d in result_lines(proc.stdout)] == CPU  # echoed as log lines (a pipe)
    outputs = set()
    # One pod: its phases name what they imported, each package once over the whole pod
    # (startup: torch, loadbench; the first library's modeling imports: transformers).
    named: dict[str, list[str]] = {}
    for doc in docs:
        for p in doc["pod"]["phases"]:
            if p.get("packages") and p["name"] != "startup and imports":
                named.setdefault(p["name"], []).extend(p["packages"])
    startup = docs[0]["pod"]["phases"][0]["packages"]
    assert {"torch", "loadbench"} <= set(startup) and "transformers" in named["modeling imports"]
    everything = startup + [n for names in named.values() for n in names]
    assert len(everything) == len(set(everything))
    for doc in docs:
        assert doc["status"] == "ok" and doc["schema"] == SCHEMA and doc["io_mode"]
        phases = [p["name"] for p in doc["pod"]["phases"]]
        assert phases[:2] == ["startup and imports", "device init"] and "trials" in phases
        assert doc["pod"]["total_s"] >= sum(p["seconds"] for p in doc["pod"]["phases"]) * 0.9
        assert doc["model"]["params"] == 3448704 and doc["settings"]["NUM_TRIALS"] == 2
        assert len(doc["trials"]) == 2
        for t in doc["trials"]:
            assert t["status"] == "ok" and t["mismatches"] == []
            assert t["tensors_verified"] == doc["model"]["tensors"]
            assert t["total_s"] > 0 and t["gbps"] > 0 and t["peak_rss_bytes"] > 0
            assert 0.0 <= t["resident_before"] <= 1.0
            assert len(t["output_ids"]) == 4 and t["tokens_per_s"] > 0
            assert len(t["tokens_per_s_runs"]) == 2 and t["first_token_s"] > 0
            outputs.add(tuple(t["output_ids"]))
    assert len(outputs) == 1, "the same weights must generate the same tokens in every library"
    assert "huggingface-bin" in last_line(proc.stderr) or "verified" in proc.stderr


def test_warm_mode_records_full_residency_and_ceilings(saved_model, tmp_path):
    proc = bench(saved_model, tmp_path / "res", CACHE_MODE="warm", LIBRARIES="safetensors",
                 SKIP_INFERENCE="1", CEILINGS="measure", CEILING_SECONDS="0.2")
    assert proc.returncode == 0, proc.stderr
    (doc,) = docs_under(tmp_path / "res")
    trial = doc["trials"][0]
    assert trial["resident_before"] == 1.0 and trial["tokens_per_s"] is None
    assert doc["ceilings"]["storage_read"]["gbps"] > 0
    assert doc["ceilings"]["page_cache_read"]["gbps"] > 0
    assert "not measured" in doc["ceilings"]["h2d_pinned"]["method"]
    assert trial["ceiling"] == "page_cache_read" and trial["ceiling_fraction"] > 0


def test_tuning_sweep_gives_one_document_per_value(saved_model, tmp_path):
    proc = bench(saved_model, tmp_path / "res", LIBRARIES="tensorizer", TZR_NUM_READERS="1,2",
                 SKIP_INFERENCE="1")
    assert proc.returncode == 0, proc.stderr
    docs = docs_under(tmp_path / "res")
    assert sorted(d["label"] for d in docs) == ["tensorizer-numreaders1", "tensorizer-numreaders2"]
    assert sorted(d["trials"][0]["library_info"]["num_readers"] for d in docs) == [1, 2]


def test_a_sweeps_default_really_is_the_librarys_default(saved_model, tmp_path):
    """runai reads its tuning from os.environ: the value of one variant must not leak into the next."""
    proc = bench(saved_model, tmp_path / "res", LIBRARIES="runai-streamer", RUNAI_CONCURRENCY="8,default",
                 SKIP_INFERENCE="1")
    assert proc.returncode == 0, proc.stderr
    seen = {d["label"]: d["trials"][0]["library_info"]["env_seen"] for d in docs_under(tmp_path / "res")}
    assert seen["runai-streamer-concurrency8"]["RUNAI_STREAMER_CONCURRENCY"] == "8"
    assert seen["runai-streamer"]["RUNAI_STREAMER_CONCURRENCY"] is None


def expect_bad_input(proc: subprocess.CompletedProcess, res: Path, needle: str, code: int = 2) -> dict:
    assert proc.returncode == code, proc.stderr
    line = last_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    docs = docs_under(res)
    assert docs and all(d["status"] == "error" for d in docs)
    messages = " ".join(d["error"]["message"] for d in docs) + proc.stderr
    assert needle in messages, messages
    assert line  # a one-line summary or message is the last thing printed
    return docs[0]


@pytest.mark.parametrize("env,needle", [
    ({"NUM_TRIALS": "x"}, "NUM_TRIALS='x' is not an integer"),
    ({"NUM_TRIALS": "-2"}, "must be >= 1"),
    ({"LIBRARIES": "tensorflow"}, "unknown library 'tensorflow'"),
    ({"SKIP_INFERENCE": "perhaps"}, "is not a boolean"),
    ({"DTYPE": "int4"}, "DTYPE='int4'"),
    ({"DEVICE": "cuda"}, "no GPU is visible"),
])
def test_bad_configuration_exits_2_with_an_error_document(saved_model, tmp_path, env, needle):
    proc = bench(saved_model, tmp_path / "res", **env)
    doc = expect_bad_input(proc, tmp_path / "res", needle)
    assert "configuration error" in last_line(proc.stderr)
    assert doc["error"]["where"] == "settings"


def test_missing_model_path(tmp_path):
    proc = bench(tmp_path / "nowhere", tmp_path / "res", LIBRARIES="safetensors")
    expect_bad_input(proc, tmp_path / "res", "does not exist: run save_models.py first")


def test_missing_format_files(model_copy, tmp_path):
    (weights(model_copy, "tensorizer")).unlink()
    proc = bench(model_copy, tmp_path / "res", LIBRARIES="tensorizer")
    expect_bad_input(proc, tmp_path / "res", "model.tensors is missing")


def test_missing_and_foreign_manifest(model_copy, tmp_path):
    manifest = model_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    data["model"]["id"] = "random/gpt-j-6b"
    manifest.write_text(json.dumps(data))
    proc = bench(model_copy, tmp_path / "a", LIBRARIES="safetensors")
    expect_bad_input(proc, tmp_path / "a", "is for MODEL_ID='random/gpt-j-6b'")
    manifest.unlink()
    proc = bench(model_copy, tmp_path / "b", LIBRARIES="safetensors")
    expect_bad_input(proc, tmp_path / "b", "manifest.json is missing")


@pytest.mark.parametrize("library", OWNERS)
def test_truncated_checkpoint_is_bad_input(model_copy, tmp_path, library):
    path = weights(model_copy, library)
    os.truncate(path, path.stat().st_size // 2)
    proc = bench(model_copy, tmp_path / "res", LIBRARIES=library)
    expect_bad_input(proc, tmp_path / "res", "truncated or replaced")


@pytest.mark.parametrize("library", CORE)
def test_corrupted_checkpoint_is_never_ok(model_copy, tmp_path, library):
    path = weights(model_copy, library)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0x5A for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))  # same size: only the content check can catch it
    proc = bench(model_copy, tmp_path / "res", LIBRARIES=library, SKIP_INFERENCE="1")
    assert proc.returncode == 1, proc.stderr
    (doc,) = docs_under(tmp_path / "res")
    assert doc["status"] == "error"
    trial = doc["trials"][0]
    assert trial["status"] in ("mismatch", "error")
    if trial["status"] == "mismatch":
        assert any("checksum differs" in m["problem"] for m in trial["mismatches"])
    assert "Traceback" not in proc.stderr
    line = last_line(proc.stderr)
    assert line.startswith("loadbench: 1 of 1 failed;") and "(exit 1)" in line
    assert "differ from the manifest" in line or "Error" in line


def test_absent_peer_is_reported_not_installed(saved_model, tmp_path):
    script = str(ROOT / "deserialize_benchmark.py")
    code = ("import sys, runpy; sys.modules['fastsafetensors'] = None; "
            f"sys.argv = ['deserialize_benchmark.py']; runpy.run_path({script!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DEVICE": "cpu", "MODEL_ID": "random/opt-tiny",
           "MODEL_PATH": str(saved_model), "RES_PATH": str(tmp_path / "res"),
           "LIBRARIES": "fastsafetensors"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    doc = expect_bad_input(proc, tmp_path / "res", "is not installed")
    assert doc["error"]["type"] == "NotInstalled"


@pytest.mark.slow
def test_save_is_atomic_and_rerunnable(tmp_path):
    path = tmp_path / "m"
    env = {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(path), "LIBRARIES": "safetensors",
           "NUM_TRIALS": "2"}
    assert run_script("save_models.py", env).returncode == 0
    first = json.loads((path / "manifest.json").read_text())
    assert len(first["formats"]["safetensors"]["save_s"]) == 2
    env["LIBRARIES"] = "tensorizer"
    proc = run_script("save_models.py", env)
    assert proc.returncode == 0, proc.stderr
    second = json.loads((path / "manifest.json").read_text())
    assert set(second["formats"]) == {"safetensors", "tensorizer"}  # same weights: kept
    assert not [p for p in os.listdir(path) if p.startswith(".")]  # no partial folders left


def test_save_rejects_unknown_random_model(tmp_path):
    proc = run_script("save_models.py", {"MODEL_ID": "random/gpt-9", "MODEL_PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert "unknown built-in model" in last_line(proc.stderr)
    assert not (tmp_path / "manifest.json").exists()


def test_save_rejects_a_path_that_is_not_a_folder(tmp_path):
    proc = run_script("save_models.py", {"MODEL_ID": str(tmp_path / "no-such-model"),
                                         "MODEL_PATH": str(tmp_path / "out")})
    assert proc.returncode == 2
    assert "is none of: a hub id (org/name), a local folder" in last_line(proc.stderr)


@pytest.mark.parametrize("odirect,resident_after", [("1", 0.0), ("0", 1.0)])
def test_fastsafetensors_io_mode_is_what_the_document_says(model_copy, tmp_path, odirect, resident_after):
    """O_DIRECT reads leave the page cache empty, buffered reads fill it: measured with mincore."""
    from loadbench.storage import cache
    files = [str(weights(model_copy, "fastsafetensors"))]
    proc = bench(model_copy, tmp_path / "res", LIBRARIES="fastsafetensors", FST_ODIRECT=odirect,
                 CACHE_MODE="cold", SKIP_INFERENCE="1")
    assert proc.returncode == 0, proc.stderr
    (doc,) = docs_under(tmp_path / "res")
    assert doc["trials"][0]["resident_before"] == 0.0
    assert ("O_DIRECT" in doc["io_mode"]) == (odirect == "1"), doc["io_mode"]
    assert cache.residency(files) == pytest.approx(resident_after, abs=0.05)


@pytest.mark.parametrize("direct,resident_after", [("1", 0.0), ("0", 1.0)])
def test_the_references_o_direct_reads_skip_the_page_cache_and_verify(model_copy, tmp_path, direct,
                                                                      resident_after):
    """REF_DIRECT=1: the reference reads whole pages with O_DIRECT around its unaligned spans; every
    tensor still verifies, the page cache stays empty (mincore), and io_mode says which it was."""
    from loadbench.storage import cache
    files = [str(p) for p in (model_copy / "safetensors").glob("*.safetensors")]
    proc = bench(model_copy, tmp_path / "res", LIBRARIES="reference", REF_DIRECT=direct,
                 CACHE_MODE="cold", SKIP_INFERENCE="1")
    assert proc.returncode == 0, proc.stderr
    (doc,) = docs_under(tmp_path / "res")
    (trial,) = doc["trials"]
    assert trial["status"] == "ok" and trial["tensors_verified"] > 0 and not trial["mismatches"]
    assert trial["resident_before"] == 0.0
    assert doc["io_mode"].startswith("O_DIRECT preadv" if direct == "1" else "buffered preadv")
    assert cache.residency(files) == pytest.approx(resident_after, abs=0.05)


def test_the_reference_with_overlapped_reads_verifies_and_says_so(model_copy, tmp_path):
    """REF_OVERLAP=1: the reads start before the skeleton is built, in a real pod; every tensor
    still verifies, and the document says the skeleton was built while the reads ran."""
    proc = bench(model_copy, tmp_path / "res", LIBRARIES="reference", REF_OVERLAP="1",
                 CACHE_MODE="warm", SKIP_INFERENCE="1")
    assert proc.returncode == 0, proc.stderr
    (doc,) = docs_under(tmp_path / "res")
    (trial,) = doc["trials"]
    assert trial["status"] == "ok" and trial["tensors_verified"] > 0 and not trial["mismatches"]
    assert doc["io_mode"].endswith("skeleton built while the reads run"), doc["io_mode"]
    info = trial["library_info"]
    assert doc["options"].get("overlap") is True and info["overlap"] is True
    # the reads started before the skeleton was done: its mark falls inside them
    assert 0 < info["reads_lead_s"] <= trial["skeleton_s"] + 1e-6
    assert trial["skeleton_s"] > 0 and trial["weights_s"] > 0
