"""benchmarks/gpu_run.sh's rotation mode, on the CPU: one format on disk at a time, every
configuration that reads it measured cold and warm, the next format saved from the same
weights (same checksums), the last one the only folder left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loadbench import schema
from tests.conftest import ROOT, clean_env


def test_rotation_saves_measures_and_deletes_one_format_at_a_time(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    env = clean_env({"MODEL": "llama-tiny", "DEVICE": "cpu", "DTYPE": "float32", "WORK": str(work),
                     "OUT": str(out), "ROTATE_FORMATS": "safetensors tensorizer",
                     "LIBS": "safetensors,tensorizer", "INFER": "0", "CEILING_SECONDS": "0.2",
                     "BUDGET": "900"})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 is the venv's
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh", "rotate:1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== rotation: safetensors" in proc.stdout and "== rotation: tensorizer" in proc.stdout
    docs, skipped = schema.read_many(str(work / "results"))
    assert not skipped, skipped
    seen = sorted((d["library"], d["settings"]["CACHE_MODE"]) for d in docs)
    # tensorizer runs twice per mode: its default and its 16-reader configuration
    assert seen == sorted((lib, mode) for lib in ("safetensors", "tensorizer", "tensorizer")
                          for mode in ("cold", "warm")), seen
    assert all(d["status"] == "ok" and d["trials"][0]["tensors_verified"] > 0 for d in docs)
    model = work / "models" / "llama-tiny"
    assert [p.name for p in model.iterdir() if p.is_dir()] == []  # each format deleted after its runs
    first, second = (json.loads((out / f"manifest-{f}.json").read_text()) for f in ("safetensors",
                                                                                   "tensorizer"))
    assert first["tensors"] == second["tensors"]  # the rebuilt weights are the saved ones
    assert list(first["formats"]) == ["safetensors"]
    assert list(second["formats"]) == ["tensorizer"]  # the deleted format left the manifest
