"""Shared fixtures: one real opt-tiny checkpoint per test session, saved by save_models.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_script(script: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    """Run an entry point in a fresh process with exactly these settings."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("MODEL_", "RES_", "NUM_", "SKIP_", "LIBRARIES", "CACHE_", "DTYPE",
                                 "DEVICE", "RUN_ID", "TZR_", "CEILING"))}
    full.update({"PYTHONPATH": str(ROOT), "DEVICE": "cpu", "PYTHONUNBUFFERED": "1"})
    full.update(env)
    return subprocess.run([sys.executable, str(ROOT / script)], env=full, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def result_lines(stdout: str) -> list[dict]:
    prefix = "LOADBENCH_RESULT "
    return [json.loads(line[len(prefix):]) for line in stdout.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """random/opt-tiny in every core format, written once by the real save script."""
    path = tmp_path_factory.mktemp("ckpt") / "opt-tiny"
    proc = run_script("save_models.py", {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(path)})
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture
def model_copy(saved_model: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    dst = tmp_path / "opt-tiny"
    shutil.copytree(saved_model, dst)
    return dst
