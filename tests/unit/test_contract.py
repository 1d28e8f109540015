"""The loader contract, from the registry alone: each entry's flags and its module agree.

Every test here is parametrised from `loaders.LIBRARIES`, never from a hand list, so a new entry
is checked the moment it is added. tests/e2e/test_contract.py runs each entry for real.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from loadbench import config, loaders
from loadbench.config.settings import OPTION_PARSERS


def check_contract(lib: loaders.Library) -> None:
    """What the parametrised test asserts for one entry (the liar tests below run it too)."""
    mod = loaders.module(lib.name)
    assert isinstance(mod, loaders.Loader), f"{lib.module} lacks import_package() or load()"
    problems = loaders.contract_problems(lib, mod)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("lib", loaders.LIBRARIES, ids=lambda lib: lib.name)
def test_each_module_holds_exactly_what_its_entry_declares(lib):
    check_contract(lib)


@pytest.mark.parametrize("lib", loaders.LIBRARIES, ids=lambda lib: lib.name)
def test_each_entry_is_complete_for_the_rest_of_the_package(lib):
    assert lib.format in loaders.FORMAT_OWNERS, f"nobody saves {lib.format!r}, which {lib.name} reads"
    assert lib.role in ("product", "instrument", "baseline")
    names = {s.name for s in config.SETTINGS}
    if lib.skip:
        assert lib.skip in names, f"{lib.skip} is not a setting"
    for option in lib.options:
        assert option.kind in OPTION_PARSERS, f"{lib.name}.{option.field}: kind {option.kind!r}"
        assert option.env in names


def test_skip_variables_are_the_registrys():
    skips = {s.name for s in config.SETTINGS if s.name.startswith("SKIP_") and s.name != "SKIP_INFERENCE"}
    assert skips == set(loaders.SKIP_VARS)
    assert len(loaders.with_role("baseline")) == 1, "the reports compare every library to one baseline"


def _entry(base: str, **lies: object) -> loaders.Library:
    """A toy entry: a real library's module under a name of its own, with flags that lie."""
    return replace(loaders.get(base), name=f"liar-{base}", **lies)


LIES = [
    # (entry, what the check must say)
    (_entry("huggingface-bin", supports_tp=True), "supports_tp=True, but the module has no load_tp()"),
    (_entry("safetensors", supports_tp=False), "has load_tp(), but its entry says supports_tp=False"),
    (_entry("huggingface", owns_format=True, weight_suffixes=(".safetensors",)),
     "owns_format=True, but the module has no save()"),
    (_entry("safetensors", tp_files=True), "tp_files=True, but the module has no tp_file()"),
    (_entry("tensorizer", tp_files=False), "has save_tp(), but its entry says tp_files=False"),
    (_entry("tensorizer", supports_tp=False), "tp_files=True without supports_tp=True"),
    (_entry("flashpack", weight_suffixes=()), "no weight_suffixes"),
    (_entry("safetensors", module="loadbench.loaders.context"), "no import_package()"),
    (_entry("safetensors", module="loadbench.no_such_module"), "does not import"),
]


@pytest.mark.parametrize("liar,needle", LIES, ids=[lie[0].name + "-" + str(i) for i, lie in enumerate(LIES)])
def test_the_check_catches_an_entry_whose_flags_lie(liar, needle):
    problems = loaders.contract_problems(liar)
    assert any(needle in p for p in problems), problems


def test_a_registered_liar_fails_the_contract_test():
    """Registered like any library, a lying entry joins the table and fails the same check the
    parametrised test runs: the contract test can fail."""
    liar = _entry("huggingface-bin", supports_tp=True)
    loaders.register(liar)
    try:
        assert liar in loaders.LIBRARIES and liar.name in loaders.NAMES
        with pytest.raises(AssertionError, match="no load_tp"):
            check_contract(liar)
    finally:
        loaders.unregister(liar.name)
    assert liar.name not in loaders.NAMES


def test_arity_drift_is_caught(monkeypatch):
    mod = loaders.module("safetensors")
    monkeypatch.setattr(mod, "load_tp", lambda ctx, rank: None)
    problems = loaders.contract_problems(loaders.get("safetensors"), mod)
    assert any("load_tp() does not take 4" in p for p in problems), problems
