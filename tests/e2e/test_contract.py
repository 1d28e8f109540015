"""Every registry entry through save -> load -> verify on a CPU, with the real entry points.

The checkpoint is written once by save_models.py with every format a CPU can load (the
`saved_model` fixture: each format's owner saves it); each entry is then loaded by
deserialize_benchmark.py in a fresh process, alone. What each entry must produce follows from its
flags, never from a hand list:

- installed, loads on a CPU: exit 0, every tensor verified bit for bit against the manifest;
- needs CUDA: its documented error, a NeedsCUDA document and exit 2;
- not installed: a NotInstalled document and exit 2 (proven for every entry below by hiding each
  library's package from the process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadbench import loaders, schema
from tests.conftest import ROOT, clean_env, run_script


def installed(lib: loaders.Library) -> bool:
    return loaders.version(lib.package) is not None


def expected(lib: loaders.Library) -> str:
    """The outcome the entry documents on a CPU: "ok", or the error type of its document."""
    if not installed(lib):
        return "NotInstalled"
    if lib.needs_cuda:
        return "NeedsCUDA"
    return "ok"


def bench(model: Path, res: Path, library: str) -> subprocess.CompletedProcess:
    return run_script("deserialize_benchmark.py", {
        "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(model), "RES_PATH": str(res),
        "LIBRARIES": library, "SKIP_INFERENCE": "1", "CACHE_MODE": "cold"})


def documents(res: Path) -> list[dict]:
    docs, skipped = schema.read_many(str(res))
    assert not skipped, skipped
    return docs


@pytest.mark.parametrize("lib", loaders.LIBRARIES, ids=lambda lib: lib.name)
def test_every_entry_saves_loads_and_verifies_on_cpu(saved_model, tmp_path, lib):
    manifest = json.loads((saved_model / "manifest.json").read_text())
    outcome = expected(lib)
    if lib.owns_format and outcome != "NotInstalled":  # save: the owner wrote its format
        assert manifest["formats"][lib.format]["library"] == lib.name
    proc = bench(saved_model, tmp_path / "res", lib.name)
    docs = documents(tmp_path / "res")
    assert docs and {d["library"] for d in docs} == {lib.name}
    assert "Traceback" not in proc.stderr, proc.stderr
    if outcome == "ok":  # load and verify: every tensor, bit for bit (checksums of the manifest)
        assert proc.returncode == 0, proc.stderr
        for doc in docs:
            assert doc["status"] == "ok" and doc["model"]["format"] == lib.format
            assert doc["versions"] and doc["io_mode"]
            for trial in doc["trials"]:
                assert trial["status"] == "ok", trial
                assert trial["mismatches"] == []
                assert trial["tensors_verified"] == len(manifest["tensors"]) == doc["model"]["tensors"]
    else:  # its documented error: a document that says which, and exit 2 (no retry can fix it)
        assert proc.returncode == 2, proc.stderr
        for doc in docs:
            assert doc["status"] == "error" and doc["error"]["type"] == outcome, doc["error"]
            assert doc["trials"] == []
        needle = "needs CUDA" if outcome == "NeedsCUDA" else "is not installed"
        assert needle in proc.stderr.strip().splitlines()[-1]


def test_every_entry_reports_its_package_missing_as_not_installed(saved_model, tmp_path):
    """Each entry's import_package() made to fail as a missing package does: every library gets
    a NotInstalled document (never a crash), and the pod exits 2."""
    names = [lib.name for lib in loaders.LIBRARIES]
    code = ("import runpy, sys\n"
            "from loadbench import loaders\n"
            "def missing():\n"
            "    raise ModuleNotFoundError('hidden by the test')\n"
            "for lib in loaders.LIBRARIES:\n"
            "    loaders.module(lib.name).import_package = missing\n"
            "sys.argv = ['deserialize_benchmark.py']\n"
            f"runpy.run_path({str(ROOT / 'deserialize_benchmark.py')!r}, run_name='__main__')\n")
    env = clean_env({"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(saved_model),
                     "RES_PATH": str(tmp_path / "res"), "LIBRARIES": ",".join(names),
                     "SKIP_INFERENCE": "1"})
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=240, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    docs = documents(tmp_path / "res")
    assert {d["library"] for d in docs} == set(names)
    for doc in docs:
        assert doc["status"] == "error" and doc["error"]["type"] == "NotInstalled", doc["error"]
        assert "is not installed" in doc["error"]["message"]
        assert loaders.get(doc["library"]).package in doc["error"]["message"]
