"""Serialization: write every requested format, timed, then the manifest.

The manifest is removed before anything is written and written again only
at the end, atomically: while a save runs, or after one was killed, the
checkpoint is visibly incomplete and the benchmark refuses it (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from typing import Any, Callable

import torch

from loadbench import checksums, environment, libraries, models, stats
from loadbench.checkpoint import (
    FORMATS,
    MANIFEST,
    MANIFEST_SCHEMA,
    CheckpointError,
    file_entries,
    publish,
    read_manifest,
    staging,
    write_json_atomic,
)
from loadbench.report import text_table
from loadbench.settings import Settings, model_slug


def _fsync_folder(folder: str) -> None:
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def unique_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, bytes) counting tied tensors once."""
    seen, params, nbytes = set(), 0, 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        params += tensor.numel()
        nbytes += tensor.numel() * tensor.element_size()
    return params, nbytes


def _previous_formats(root: str, model_info: dict[str, Any], tensors: dict[str, Any]
                      ) -> dict[str, Any]:
    """Formats of an earlier save of the very same weights, still on disk, to keep."""
    with contextlib.suppress(CheckpointError):
        old = read_manifest(root)
        same = (old["tensors"] == tensors
                and {k: old["model"].get(k) for k in ("id", "dtype")}
                == {k: model_info[k] for k in ("id", "dtype")})
        if same:
            return {f: e for f, e in old["formats"].items()
                    if os.path.isdir(os.path.join(root, f))}
    return {}


def save_all(cfg: Settings, progress: Callable[[str], None]) -> dict[str, Any]:
    root = cfg["MODEL_PATH"]
    model_id = cfg["MODEL_ID"]
    device = environment.resolve_device(cfg["DEVICE"])
    dtype = models.DTYPES[cfg["DTYPE"]]
    formats = libraries.formats_for(cfg["LIBRARIES"])
    owners = {fmt: libraries.require(libraries.FORMAT_OWNERS[fmt]) for fmt in formats}

    progress(f"building {model_id} ({cfg['DTYPE']}) on {device}")
    start = time.perf_counter()
    model, tokenizer = models.load_source(model_id, dtype, device, cfg["RANDOM_SEED"])
    build_s = time.perf_counter() - start
    params, nbytes = unique_bytes(model)
    progress(f"built in {build_s:.1f} s: {params / 1e9:.3f} B parameters, {nbytes / 1e9:.3f} GB")
    tensors = checksums.state_checksums(models.state(model))  # on the build device: fast
    if device.type != "cpu":
        model = model.to("cpu")  # the writers want host tensors

    config = model.config
    model_info = {"id": model_id, "name": model_slug(model_id),
                  "arch": (config.architectures or [type(model).__name__])[0],
                  "model_type": config.model_type, "dtype": cfg["DTYPE"], "params": params,
                  "bytes": nbytes, "tensors": len(tensors),
                  "random_seed": cfg["RANDOM_SEED"] if models.is_random(model_id) else None}

    kept = _previous_formats(root, model_info, tensors)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, MANIFEST))
    os.makedirs(root, exist_ok=True)
    config.save_pretrained(root)
    if tokenizer is not None:
        tokenizer.save_pretrained(root)

    entries = dict(kept)
    n = cfg["NUM_TRIALS"]
    for fmt in formats:
        owner = owners[fmt]
        times = []
        for trial in range(n):
            tmp = staging(root, fmt)
            try:
                t0 = time.perf_counter()
                owner.save(model, tokenizer, tmp)
                _fsync_folder(tmp)  # the time includes the bytes reaching storage
                times.append(time.perf_counter() - t0)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if trial == n - 1:
                publish(root, fmt, tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            progress(f"saved {fmt} ({owner.NAME}) {trial + 1}/{n} in {times[-1]:.2f} s")
        files = file_entries(os.path.join(root, fmt), owner.WEIGHT_SUFFIXES)
        entries[fmt] = {"library": owner.NAME, "version": libraries.version(owner.PACKAGE),
                        "files": files, "save_s": times,
                        "bytes": sum(f["bytes"] for f in files if f["weights"])}

    manifest = {"schema": MANIFEST_SCHEMA, "model": model_info, "formats": entries,
                "tensors": tensors, "checksum": checksums.ALGORITHM,
                "versions": environment.versions(), "build_s": build_s,
                "build_device": str(device), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                         time.gmtime())}
    write_json_atomic(os.path.join(root, MANIFEST), manifest)
    return manifest


def summary(manifest: dict[str, Any]) -> str:
    rows = [("format", "library", "GB", "median save s", "GB/s")]
    for fmt in FORMATS:
        e = manifest["formats"].get(fmt)
        if not e:
            continue
        times = sorted(e["save_s"])
        med = stats.percentile(times, 50) if times else None
        rows.append((fmt, e["library"], f"{e['bytes'] / 1e9:.3f}",
                     f"{med:.2f}" if med else "kept", f"{e['bytes'] / med / 1e9:.2f}" if med else "-"))
    return text_table(rows)


def log(message: str) -> None:
    print(f"save_models: {message}", file=sys.stderr, flush=True)
