"""What a new user trips on in the second hour: packaging, --version, --help that does nothing,
one-line errors instead of tracebacks, `make lint` and `make demo` ending with a report."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import loadbench
from loadbench import cli, errors
from tests.conftest import ROOT, clean_env

BIN = Path(sys.executable).parent


def requirements(name: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / name).read_text().splitlines())
    return [str(Requirement(line)) for line in lines if line]


# ------------------------------------------------------------------ packaging

def test_loadbench_version_prints_the_version():
    for cmd in ([str(BIN / "loadbench"), "--version"], [sys.executable, "-m", "loadbench.cli", "--version"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"loadbench {loadbench.__version__}\n"
    assert "loadbench --version" in subprocess.run([str(BIN / "loadbench"), "--help"], capture_output=True,
                                                   text=True).stdout


def test_the_package_declares_what_it_needs_and_accepts_the_installed_torch(tmp_path):
    """`pip install -e .` installs requirements.txt; the extras are requirements-peers.txt and -dev.txt;
    the torch range accepts 2.13.0, so installing torch first means pip downloads no other."""
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-deps",
                           "--no-build-isolation", "--report", str(report), "-e", str(ROOT)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (item,) = json.loads(report.read_text())["install"]
    meta = item["metadata"]
    assert meta["version"] == loadbench.__version__
    declared = {str(Requirement(r)) for r in meta["requires_dist"]}
    assert {r for r in declared if "extra ==" not in r} == set(requirements("requirements.txt"))
    for extra, name in (("peers", "requirements-peers.txt"), ("dev", "requirements-dev.txt")):
        assert extra in meta["provides_extra"]
        assert {str(Requirement(r).name) for r in meta["requires_dist"] if f'extra == "{extra}"' in r} == {
            Requirement(r).name for r in requirements(name)}
    (torch,) = [Requirement(r) for r in meta["requires_dist"] if Requirement(r).name == "torch"]
    assert torch.specifier.contains("2.13.0") and torch.specifier.contains("2.13.0+cpu", prereleases=True)


# ------------------------------------------------------------------ exit codes, one line

def test_save_maps_exceptions_to_exit_codes_through_errors_exit_code(monkeypatch, tmp_path, capsys):
    from loadbench.measure import saving
    env = {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(tmp_path / "m"), "DEVICE": "cpu"}
    monkeypatch.setattr(saving, "save_all", lambda *a, **k: pytest.fail("saved with a bad setting"))
    assert cli.save_main([], {**env, "DTYPE": "float99"}) == errors.EXIT_BAD_INPUT  # a ConfigError
    for exc, code in ((errors.Transient("hub unreachable"), errors.EXIT_TRANSIENT),
                      (errors.CheckpointError("truncated"), errors.EXIT_BAD_INPUT),
                      (RuntimeError("boom"), errors.EXIT_FAILED), (KeyboardInterrupt(), 130)):
        def fail(*_a, exc=exc, **_k):
            raise exc
        monkeypatch.setattr(saving, "save_all", fail)
        assert cli.save_main([], env) == code == errors.exit_code(exc)
    err = capsys.readouterr().err
    assert "error: Transient: hub unreachable" in err and "Traceback" in err  # only the unexpected one
    assert err.count("Traceback") == 1


def test_the_exit_code_help_is_errors_exit_meanings():
    for code, meaning in errors.EXIT_MEANINGS.items():
        assert f"  {code:<3}  {meaning}" in cli.EXIT_CODES


def test_schema_module_under_a_python_without_pydantic_says_use_the_venv():
    """-S: no site-packages, as a system Python without loadbench's dependencies."""
    proc = subprocess.run([sys.executable, "-S", "-m", "loadbench.schema"], capture_output=True, text=True,
                          cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert ".venv/bin/python -m loadbench.schema" in proc.stderr


# ------------------------------------------------------------------ scripts and make

def test_fetch_wheels_help_prints_usage_and_downloads_nothing(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks/fetch_wheels.sh", tmp_path / "benchmarks")
    (tmp_path / "benchmarks/gpu-wheels.txt").write_text("torch==2.11.0\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("python3", "pip", "curl", "wget"):  # anything that could download leaves a mark
        (fake / name).write_text(f"#!/bin/sh\ntouch {tmp_path}/downloaded\n")
        (fake / name).chmod(stat.S_IRWXU)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    for arg, code in (("--help", 0), ("-h", 0), ("--bogus", 2)):
        proc = subprocess.run(["bash", str(tmp_path / "benchmarks/fetch_wheels.sh"), arg],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == code, proc.stderr
        assert "usage: benchmarks/fetch_wheels.sh" in (proc.stdout if code == 0 else proc.stderr)
    assert not (tmp_path / "downloaded").exists() and not (tmp_path / ".whl").exists()


def test_make_lint_runs_ruff_mypy_and_yamllint():
    proc = subprocess.run(["make", "-n", "lint"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for tool in ("ruff check", "mypy", "yamllint"):
        assert tool in proc.stdout
    test = subprocess.run(["make", "-n", "test"], capture_output=True, text=True, cwd=ROOT).stdout
    assert test.index("ruff check") < test.index("mypy") < test.index("pytest"), "mypy right after ruff"


@pytest.mark.slow
def test_make_demo_ends_with_the_path_of_its_report(tmp_path):
    demo = tmp_path / "demo"
    env = clean_env({"DEVICE": "cpu"})
    proc = subprocess.run(["make", "-s", "demo", f"DEMO_DIR={demo}"], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"demo report: {demo}/report/report.html"
    assert (demo / "report/report.html").stat().st_size > 0
    assert list((demo / "results").rglob("*.json"))


def test_the_docker_build_context_leaves_out_what_make_and_the_demo_write():
    """`docker build .` after `make test` would otherwise send ~2 GB (.venv, .venv-checkov)."""
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".venv-*", "loadbench-data", "results", "report", "pvc", ".whl", "*.whl",
            "**/__pycache__", ".mypy_cache", ".pytest_cache"} <= ignored
    dockerfile = (ROOT / "Dockerfile").read_text()
    for copied in ("requirements.txt", "requirements-peers.txt", "loadbench", "save_models.py"):
        assert copied in dockerfile and copied not in ignored


def test_an_unreachable_hub_is_transient_at_once_without_the_clients_retries(tmp_path):
    """The hub client retries for ~27 s offline; a pod's own retry (exit 3) is the one to have."""
    proc = subprocess.run([sys.executable, str(ROOT / "save_models.py")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env=clean_env({
                              "MODEL_ID": "some-org/some-model", "MODEL_PATH": str(tmp_path / "m"),
                              "LIBRARIES": "safetensors", "HF_ENDPOINT": "https://hub.loadbench.invalid"}))
    assert proc.returncode == 3, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "hub.loadbench.invalid" in last and "could not be reached" in last
    assert "Retrying" not in proc.stderr and "Traceback" not in proc.stderr
