"""Serialization: write every requested format, timed, then the manifest.

The manifest is removed before anything is written and written again only
at the end, atomically: while a save runs, or after one was killed, the
checkpoint is visibly incomplete and the benchmark refuses it (exit 2).
Before writing, the save removes what its own killed predecessors left
(staging folders, by name) and checks that the formats fit on the volume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from typing import Any, Callable

import torch

from loadbench import loaders, machine, models
from loadbench.config import Settings, model_slug
from loadbench.config.settings import parse_size
from loadbench.errors import BadInput, CheckpointError
from loadbench.measure import checksums
from loadbench.schema.manifest import MANIFEST, MANIFEST_SCHEMA
from loadbench.storage.checkpoint import file_entries, publish, read_manifest, remove_stale, staging
from loadbench.storage.files import write_json_atomic
from loadbench.terminal import FolderWatch, human_bytes, human_count, median_rate, text_table

HUB_SHARD = 5 << 30  # the Hub's long-standing 5 GB shards (transformers 5 defaults to 50 GB)
SPACE_MARGIN = 1.05   # headers, config files, the filesystem's own overhead


class NoSpace(BadInput):
    """The volume cannot hold the checkpoint: a bigger PVC or fewer formats, not a retry."""


def shard_bytes(setting: str, model_bytes: int) -> int | None:
    """Largest safetensors file for SHARD_SIZE; None means one file."""
    if setting == "none":
        return None
    if setting == "auto":
        return HUB_SHARD if model_bytes > HUB_SHARD else None
    return parse_size("SHARD_SIZE", setting)


def check_space(root: str, needed: int) -> None:
    """Fail at once, before hours of writing, when the formats cannot fit."""
    probe = root
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    free = shutil.disk_usage(probe).free
    if needed * SPACE_MARGIN > free:
        raise NoSpace(f"saving needs {human_bytes(needed * SPACE_MARGIN)}, {human_bytes(free)} free on "
                      f"{probe}: use a larger volume or fewer LIBRARIES (each format is a full copy)")


def no_space_message(exc: BaseException, folder: str) -> str | None:
    """ENOSPC, however a writer reports it (torch's `unexpected pos`, an OSError)."""
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "unexpected pos" in text \
            or "No space left" in text:
        free = shutil.disk_usage(folder).free if os.path.exists(folder) else 0
        return (f"no space left on {folder} while saving ({human_bytes(free)} free now): use a "
                f"larger volume or fewer LIBRARIES")
    return None


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
    root = cfg.model_path
    model_id = cfg.model_id
    device = machine.resolve_device(cfg.device)
    dtype = models.DTYPES[cfg.dtype]
    formats = loaders.formats_for(list(cfg.libraries))
    owners = {fmt: loaders.require(loaders.FORMAT_OWNERS[fmt]) for fmt in formats}
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # our own progress lines say it; a bar would garble pod logs
    for path in remove_stale(root, loaders.FORMATS):
        progress(f"removed {path}, left by a killed save")

    progress(f"building {model_id} ({cfg.dtype}) on {device}")
    start = time.perf_counter()
    model, tokenizer = models.load_source(model_id, dtype, device, cfg.random_seed)
    build_s = time.perf_counter() - start
    params, nbytes = unique_bytes(model)
    progress(f"built in {build_s:.1f} s: {human_count(params)} parameters, {human_bytes(nbytes)}")
    check_space(root, nbytes * len(formats))
    shard = shard_bytes(cfg.shard_size, nbytes)
    tensors = checksums.state_checksums(models.state(model))  # on the build device: fast
    tp = _tp_layout(model, cfg.tp_size, progress) if cfg.tp_size > 1 else None
    if device.type != "cpu":
        model = model.to("cpu")  # the writers want host tensors

    config: Any = model.config
    model_info = {"id": model_id, "name": model_slug(model_id),
                  "arch": (config.architectures or [type(model).__name__])[0],
                  "model_type": config.model_type, "dtype": cfg.dtype, "params": params,
                  "bytes": nbytes, "tensors": len(tensors),
                  "random_seed": cfg.random_seed if models.is_random(model_id) else None}

    kept = _previous_formats(root, model_info, tensors)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, MANIFEST))
    os.makedirs(root, exist_ok=True)
    config.save_pretrained(root)
    if tokenizer is not None:
        tokenizer.save_pretrained(root)

    entries = dict(kept)
    n = cfg.num_trials
    for fmt in formats:
        owner = owners[fmt]
        spec = loaders.get(loaders.FORMAT_OWNERS[fmt])
        times = []
        for trial in range(n):
            tmp = staging(root, fmt)
            try:
                t0 = time.perf_counter()
                with FolderWatch(tmp, nbytes, f"saving {fmt}", progress):
                    owner.save(model, tokenizer, tmp, shard)
                    _fsync_folder(tmp)  # the time includes the bytes reaching storage
                times.append(time.perf_counter() - t0)
            except BaseException as e:
                shutil.rmtree(tmp, ignore_errors=True)
                message = no_space_message(e, root) if isinstance(e, Exception) else None
                if message:
                    raise NoSpace(message) from e
                raise
            if trial == n - 1:
                if tp and spec.tp_files:
                    tp_s = _save_tp(owner, model, tp, tmp, progress)
                publish(root, fmt, tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            progress(f"saved {fmt} ({spec.name}) {trial + 1}/{n} in {times[-1]:.2f} s "
                     f"({nbytes / times[-1] / 1e9:.2f} GB/s)")
        files = file_entries(os.path.join(root, fmt), spec.weight_suffixes)
        if tp and spec.tp_files:
            _mark_rank_files(owner, files, cfg.tp_size)
        entries[fmt] = {"library": spec.name, "version": loaders.version(spec.package),
                        "files": files, "save_s": times,
                        "bytes": sum(f["bytes"] for f in files if f["weights"]),
                        "shard_bytes": shard if spec.shards else None}
        if tp and spec.tp_files:
            entries[fmt]["tp_save_s"] = {str(cfg.tp_size): tp_s}

    manifest = {"schema": MANIFEST_SCHEMA, "model": model_info, "formats": entries,
                "tensors": tensors, "checksum": checksums.ALGORITHM,
                "versions": machine.versions(), "build_s": build_s,
                "build_device": str(device), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                         time.gmtime())}
    if tp:
        manifest["tp"] = {str(cfg.tp_size): tp["slices"]}
    write_json_atomic(os.path.join(root, MANIFEST), manifest)
    if cfg.model_uri:  # the upload ends with manifest.json: a save is complete only then
        from loadbench.storage import objectstore
        progress(f"uploading {root} to {cfg.model_uri} ({cfg.s3_concurrency} requests at once)")
        sent = objectstore.upload_folder(root, cfg.model_uri, concurrency=cfg.s3_concurrency,
                                         part_bytes=cfg.s3_part_bytes, progress=progress)
        progress(f"uploaded {human_bytes(sent['bytes'])} in {sent['seconds']:.1f} s "
                 f"({sent['gbps']:.2f} GB/s) to {cfg.model_uri}")
    return manifest


def _tp_layout(model: torch.nn.Module, world: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """TP_SIZE>1: the architecture's split of every tensor and each rank's slice checksums,
    computed from the full tensors (on the build device) before any format is written."""
    from loadbench.measure import tp_plan
    state = models.state(model)
    dims = tp_plan.split_dims(model, state)
    slices = tp_plan.slice_checksums(state, dims, world)
    progress(f"tensor-parallel layout for TP_SIZE={world}: {len(slices)} of {len(state)} tensors split "
             f"({sum(1 for d, _ in dims.values() if d == 0)} on dim 0, "
             f"{sum(1 for d, _ in dims.values() if d == 1)} on dim 1), the rest replicated")
    return {"world": world, "dims": dims, "slices": slices}


def _save_tp(owner: Any, model: torch.nn.Module, tp: dict[str, Any], folder: str,
             progress: Callable[[str], None]) -> float:
    """Per-rank files of a format that has them (tensorizer), beside its full file; untimed
    in save_s, recorded as tp_save_s."""
    from loadbench.measure import tp_plan
    state = models.state(model)
    start = time.perf_counter()
    for rank in range(tp["world"]):
        owner.save_tp(tp_plan.rank_state(state, tp["dims"], rank, tp["world"]), folder, rank, tp["world"])
    _fsync_folder(folder)
    seconds = time.perf_counter() - start
    progress(f"saved {tp['world']} per-rank files in {seconds:.2f} s")
    return seconds


def _mark_rank_files(owner: Any, files: list[dict[str, Any]], world: int) -> None:
    """Per-rank files are not the format's weights (TP_SIZE=1 loads never read them)."""
    names = {owner.tp_file(rank, world): rank for rank in range(world)}
    for entry in files:
        if entry["name"] in names:
            entry.update(weights=False, tp_size=world, rank=names[entry["name"]])


def summary(manifest: dict[str, Any]) -> str:
    rows = [("format", "library", "files", "GB", "median save s", "GB/s")]
    for fmt in loaders.FORMATS:
        e = manifest["formats"].get(fmt)
        if not e:
            continue
        med, gbps = median_rate(e["save_s"], e["bytes"])
        rows.append((fmt, e["library"], str(sum(1 for f in e["files"] if f["weights"])),
                     f"{e['bytes'] / 1e9:.3f}", f"{med:.2f}" if med else "kept",
                     f"{gbps:.2f}" if gbps else "-"))
    return text_table(rows)

