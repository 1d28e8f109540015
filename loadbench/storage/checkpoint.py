"""The checkpoint folder: one subfolder per format, and manifest.json last.

    MODEL_PATH/
      manifest.json        written last, atomically: a checkpoint without it is incomplete
      config.json          the architecture, for meta-device skeletons
      tensorizer/          model.tensors
      safetensors/         save_pretrained output (*.safetensors, sharded with an index when large)
      bin/                 config.json, pytorch_model.bin (legacy pickle)
      flashpack/           model.flashpack

Each format is written into a temporary sibling folder and renamed into place,
so an interrupted save never leaves a folder that looks complete. Opening a
checkpoint checks the manifest and the size of every file before anything is
timed: a missing or truncated file is bad input (exit 2), found in
milliseconds rather than as a strange error deep inside a loader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from loadbench.errors import CheckpointError
from loadbench.schema.manifest import MANIFEST, MANIFEST_SCHEMA
from loadbench.schema.manifest import problems as manifest_problems


@dataclass(frozen=True)
class Checkpoint:
    root: str
    format: str
    manifest: dict[str, Any]

    @property
    def folder(self) -> str:
        return os.path.join(self.root, self.format)

    @property
    def files(self) -> list[str]:
        return [os.path.join(self.folder, f["name"])
                for f in self.manifest["formats"][self.format]["files"]]

    @property
    def weight_files(self) -> list[str]:
        """The files whose bytes are the weights (what cache modes act on)."""
        return [os.path.join(self.folder, f["name"])
                for f in self.manifest["formats"][self.format]["files"] if f.get("weights")]

    @property
    def bytes(self) -> int:
        return sum(os.path.getsize(p) for p in self.weight_files)

    @property
    def tensors(self) -> dict[str, dict[str, Any]]:
        return self.manifest["tensors"]


STAGING_PREFIXES = (".{fmt}.partial-", ".{fmt}.old-")


def staging(root: str, fmt: str) -> str:
    """A fresh temporary folder beside the format's final one."""
    os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(dir=root, prefix=f".{fmt}.partial-")


def remove_stale(root: str, formats: list[str] | tuple[str, ...]) -> list[str]:
    """Remove what killed saves of these formats left behind (their staging
    folders, by name, and nothing else): on a 60 GB model each one is 60 GB."""
    removed: list[str] = []
    if not os.path.isdir(root):
        return removed
    prefixes = tuple(p.format(fmt=f) for f in formats for p in STAGING_PREFIXES)
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(prefixes) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def publish(root: str, fmt: str, tmp_folder: str) -> None:
    """Move a finished format folder into place, replacing an older one.

    mkdtemp makes folders 0700 and some writers make files 0600: the published
    checkpoint is made readable by the group, so a collector or a benchmark pod
    running as another user of the pod's group can read it."""
    os.chmod(tmp_folder, 0o750)
    for name in os.listdir(tmp_folder):
        path = os.path.join(tmp_folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.chmod(path, os.stat(path).st_mode | 0o040)
    final = os.path.join(root, fmt)
    if os.path.exists(final):
        old = tempfile.mkdtemp(dir=root, prefix=f".{fmt}.old-")
        os.rename(final, os.path.join(old, fmt))
        os.rename(tmp_folder, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp_folder, final)


def file_entries(folder: str, weight_suffixes: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            out.append({"name": name, "bytes": os.path.getsize(path),
                        "weights": name.endswith(weight_suffixes)})
    return out


def read_manifest(root: str) -> dict[str, Any]:
    path = os.path.join(root, MANIFEST)
    if not os.path.isdir(root):
        raise CheckpointError(f"MODEL_PATH={root!r} does not exist: run save_models.py first "
                              "(or point MODEL_PATH at the folder it wrote)")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete or was not "
                              "written by save_models.py; run save_models.py again")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}); run save_models.py again") from e
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise CheckpointError(f"{path}: schema is {found!r}, expected {MANIFEST_SCHEMA!r}; "
                              "run save_models.py again")
    bad = manifest_problems(manifest)
    if bad:
        raise CheckpointError(f"{path} is not a valid manifest ({'; '.join(bad[:3])}); "
                              "run save_models.py again")
    return manifest


def open_checkpoint(root: str, fmt: str, model_id: str | None = None,
                    dtype: str | None = None, files: bool = True) -> Checkpoint:
    """Check that `fmt` is fully present and is the model asked for. With files=False only
    the manifest is checked: a checkpoint whose weights are still in object storage."""
    manifest = read_manifest(root)
    model = manifest["model"]
    if model_id and model.get("id") != model_id:
        raise CheckpointError(f"{root}/{MANIFEST} is for MODEL_ID={model.get('id')!r}, not "
                              f"{model_id!r}: point MODEL_PATH at the right folder or re-save")
    if dtype and model.get("dtype") != dtype:
        raise CheckpointError(f"{root} holds {model.get('dtype')} weights, DTYPE={dtype!r} was "
                              f"asked: set DTYPE={model.get('dtype')} or re-save with DTYPE={dtype}")
    if fmt not in manifest["formats"]:
        raise CheckpointError(f"{root} has no {fmt!r} checkpoint (it has: "
                              f"{', '.join(manifest['formats']) or 'none'}); run save_models.py "
                              f"with that library in LIBRARIES")
    ckpt = Checkpoint(root, fmt, manifest)
    for entry, path in [] if not files else zip(manifest["formats"][fmt]["files"], ckpt.files):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} is missing from the {fmt} checkpoint; run save_models.py again")
        size = os.path.getsize(path)
        if size != entry["bytes"]:
            raise CheckpointError(f"{path} is {size} bytes, the manifest says {entry['bytes']}: "
                                  f"truncated or replaced; run save_models.py again")
    return ckpt
