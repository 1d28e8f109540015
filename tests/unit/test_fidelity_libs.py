"""benchmarks/fidelity.py compares every library a user picks with its bare, documented usage:
a library added to the registry without a bare implementation there fails here."""

from __future__ import annotations

import importlib
import sys

from loadbench import loaders
from tests.conftest import ROOT


def fidelity():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("fidelity")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_fidelity_covers_every_library_a_user_picks():
    mod = fidelity()
    assert set(mod.LIBS) == {lib.name for lib in loaders.LIBRARIES if lib.role != "instrument"}
    assert set(mod.BARE) == set(mod.LIBS), "a library without a bare implementation in fidelity.py"
    assert set(mod.PACKAGES) == set(mod.LIBS), "a library without its import in fidelity.PACKAGES"
