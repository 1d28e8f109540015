"""A pod's phases name the third-party packages they imported first: where its time went."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from loadbench.schema.result import Pod
from tests.conftest import ROOT

PROBE = """
import json
from loadbench.measure import pod
first = pod.new_packages()          # everything so far: loadbench and what it imported
import colorsys                     # the standard library: not a package a pod installs
import yaml                         # a third-party package, new here
second = pod.new_packages()
third = pod.phase("device init", 0.25)   # nothing new: no "packages" key
print(json.dumps([first, second, third]))
"""


def test_each_call_names_only_the_packages_imported_since_the_last():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    first, second, third = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"loadbench", "torch", "pydantic"} <= set(first) and "yaml" not in first
    assert not [n for n in first if n in sys.stdlib_module_names or n.startswith("_")]
    assert second == ["yaml"]
    assert third == {"name": "device init", "seconds": 0.25}


def test_the_schema_takes_package_names_and_refuses_anything_else():
    ok = Pod.model_validate({"phases": [{"name": "modeling imports", "seconds": 2.0,
                                         "packages": ["transformers", "torchvision", "PIL"]}]})
    assert ok.phases[0].packages == ["transformers", "torchvision", "PIL"]
    assert Pod.model_validate({"phases": [{"name": "trials", "seconds": 1.0}]}).phases[0].packages is None
    for bad in (["$(id)"], ["a b"], [""], [7]):
        with pytest.raises(ValidationError):
            Pod.model_validate({"phases": [{"name": "x", "seconds": 1.0, "packages": bad}]})
