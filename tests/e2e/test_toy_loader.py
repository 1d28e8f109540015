"""One module and one entry: a test-only loader (tests/toy_loader.py), registered from outside the
package, runs end to end through the real deserialize_benchmark.py with no other file touched.

In a subprocess it arrives through LOADBENCH_PLUGINS (the registry imports the module and
registers its LIBRARIES before anything reads the table); in this process through
`loaders.register`. Its option (TOY_FILES_AT_ONCE) becomes a setting and sweeps like any other.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from loadbench import config, loaders, schema
from loadbench.errors import ConfigError
from tests import toy_loader
from tests.conftest import ROOT, run_script

PLUGIN = toy_loader.__name__


@pytest.fixture
def registered():
    """The toy in this process's registry, for this test only."""
    loaders.register(toy_loader.ENTRY)
    try:
        yield toy_loader.ENTRY
    finally:
        loaders.unregister(toy_loader.NAME)


def test_the_toy_runs_end_to_end_through_the_real_entry_point(saved_model, tmp_path):
    """LIBRARIES=toy: nothing to save (it reads the safetensors format the fixture saved); load,
    verify every tensor, generate, and write valid documents, one per swept option value."""
    res = tmp_path / "res"
    proc = run_script("deserialize_benchmark.py", {
        "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(saved_model), "RES_PATH": str(res),
        "LOADBENCH_PLUGINS": PLUGIN, "LIBRARIES": toy_loader.NAME, "TOY_FILES_AT_ONCE": "2,default",
        "MAX_NEW_TOKENS": "2", "INFERENCE_RUNS": "1"})
    assert proc.returncode == 0, proc.stderr
    docs, skipped = schema.read_many(str(res))  # validated by the result models in this process
    assert not skipped, skipped
    tensors = len(json.loads((saved_model / "manifest.json").read_text())["tensors"])
    assert sorted(d["label"] for d in docs) == ["toy", "toy-filesatonce2"]
    for doc in docs:
        assert doc["status"] == "ok" and doc["library"] == toy_loader.NAME
        assert doc["settings"]["LOADBENCH_PLUGINS"] == [PLUGIN]
        assert doc["model"]["format"] == "safetensors" and doc["io_mode"].startswith("toy:")
        (trial,) = doc["trials"]
        assert trial["status"] == "ok" and trial["mismatches"] == []
        assert trial["tensors_verified"] == tensors
        assert len(trial["output_ids"]) == 2
    assert sorted(str(d["trials"][0]["library_info"]["files_at_once"]) for d in docs) == ["2", "None"]
    # The pod imported with the collector off (faster imports), and every load ran with it on and
    # the imports' objects frozen, as in a user's process after its imports.
    for doc in docs:
        seen = doc["trials"][0]["library_info"]["gc"]
        assert seen["at_import"] == [False] and seen["in_load"] is True and seen["frozen"] > 10000, seen


def test_nothing_in_the_package_names_the_toy():
    """"Without touching any other file": the package neither spells the toy's name nor its module."""
    for path in (ROOT / "loadbench").rglob("*.py"):
        source = path.read_text()
        for spelled in (f'"{toy_loader.NAME}"', f"'{toy_loader.NAME}'", "toy_loader", "TOY_"):
            assert spelled not in source, f"{path.relative_to(ROOT)} spells {spelled}"


def test_registered_in_process_the_toy_is_a_library_like_any_other(registered):
    assert loaders.contract_problems(registered) == []
    assert toy_loader.NAME in loaders.NAMES and loaders.get(toy_loader.NAME) is registered
    assert config.load({"LIBRARIES": toy_loader.NAME}).libraries == (toy_loader.NAME,)
    assert loaders.formats_for([toy_loader.NAME]) == ["safetensors"]


def test_unregistered_the_toy_is_unknown_again():
    assert toy_loader.NAME not in loaders.NAMES
    with pytest.raises(ConfigError, match="unknown library 'toy'"):
        config.load({"LIBRARIES": toy_loader.NAME})


def _plugin(folder: Path, name: str, body: str) -> str:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.mark.parametrize("body,needle", [
    (None, "does not import: ModuleNotFoundError"),
    ("raise RuntimeError('broken plug-in')\n", "does not import: RuntimeError: broken plug-in"),
    ("X = 1\n", "declares no LIBRARIES"),
    ("""\
     from loadbench.loaders import Library
     LIBRARIES = (Library("liar", __name__, "safetensors", "safetensors", False, "lies",
                          supports_tp=True),)
     def import_package(): pass
     def load(ctx): pass
     """, "supports_tp=True, but the module has no load_tp()"),
    ("""\
     from loadbench.loaders import Library
     LIBRARIES = (Library("safetensors", __name__, "safetensors", "safetensors", False, "twin"),)
     def import_package(): pass
     def load(ctx): pass
     """, "'safetensors', a name already taken"),
])
def test_a_bad_plugin_is_a_configuration_error_and_registers_nothing(tmp_path, monkeypatch, body, needle):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "plugin_" + tmp_path.name.replace("-", "_")  # one module name per case
    if body is not None:
        _plugin(tmp_path, name, body)
    before = loaders.LIBRARIES
    with pytest.raises(ConfigError, match="LOADBENCH_PLUGINS") as info:
        config.load({"LOADBENCH_PLUGINS": name})
    assert needle in str(info.value)
    assert loaders.LIBRARIES == before


def test_a_bad_plugin_in_a_pod_is_exit_2_with_an_error_document(tmp_path):
    res = tmp_path / "res"
    proc = run_script("deserialize_benchmark.py", {
        "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(tmp_path), "RES_PATH": str(res),
        "LOADBENCH_PLUGINS": "tests.no_such_plugin"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "configuration error" in proc.stderr.strip().splitlines()[-1]
    (doc,) = schema.read_many(str(res))[0]
    assert doc["error"]["where"] == "settings" and "tests.no_such_plugin" in doc["error"]["message"]
