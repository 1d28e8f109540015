"""Shared fixtures: one real opt-tiny checkpoint per test session, saved by save_models.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadbench import loaders
from loadbench.config import SETTINGS

ROOT = Path(__file__).resolve().parent.parent
# The libraries that write a format a CPU can load: the owner of every format, unless it needs CUDA.
FORMAT_LIBRARIES = ",".join(lib.name for lib in loaders.LIBRARIES if lib.owns_format and not lib.needs_cuda)
# Every variable loadbench declares (the settings table: seed names, TP_SIZE, USE_FP16, each
# library's options, LOADBENCH_PLUGINS), and those it reads or sets without declaring them: the
# peers' own tuning (set per load by their loaders) and torch.distributed's group (WORLD_SIZE...).
OWN_VARS = frozenset(s.name for s in SETTINGS)
FOREIGN_PREFIXES = ("FASTSAFETENSORS_", "RUNAI_STREAMER_", "FLASHPACK_", "INSTANTTENSOR_", "TENSORIZER_")
FOREIGN_VARS = frozenset({"WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"})


def loadbench_var(name: str) -> bool:
    return name in OWN_VARS or name in FOREIGN_VARS or name.startswith(FOREIGN_PREFIXES)


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without loadbench's variables, plus `env`."""
    full = {k: v for k, v in os.environ.items() if not loadbench_var(k)}
    # ROOT first, and whatever the caller's PYTHONPATH holds after it (a GPU machine's carried wheels).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full.update({"PYTHONPATH": path, "DEVICE": "cpu", "PYTHONUNBUFFERED": "1", "CEILINGS": "0"})
    full.update(env)
    return full


def run_script(script: str, env: dict[str, str], timeout: float = 240, args: list[str] | None = None
               ) -> subprocess.CompletedProcess:
    """Run an entry point in a fresh process with exactly these settings."""
    return subprocess.run([sys.executable, str(ROOT / script), *(args or [])], env=clean_env(env),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def result_lines(stdout: str) -> list[dict]:
    from loadbench.schema.result import LOG_PREFIX as prefix
    return [json.loads(line[len(prefix):]) for line in stdout.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """random/opt-tiny in every format that runs on a CPU, written once by the real save script."""
    path = tmp_path_factory.mktemp("ckpt") / "opt-tiny"
    proc = run_script("save_models.py", {"MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(path),
                                         "LIBRARIES": FORMAT_LIBRARIES})
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture
def model_copy(saved_model: Path, tmp_path: Path) -> Path:
    """A private copy a test may damage."""
    dst = tmp_path / "opt-tiny"
    shutil.copytree(saved_model, dst)
    return dst
