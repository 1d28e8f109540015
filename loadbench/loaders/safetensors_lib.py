"""safetensors: each file read straight onto the device, assigned into a skeleton."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext, TPPlan

if TYPE_CHECKING:
    from transformers import PreTrainedModel

INDEX = "model.safetensors.index.json"


def import_package() -> None:
    import safetensors.torch  # noqa: F401


def save(model: PreTrainedModel, tokenizer: Any, folder: str, shard_bytes: int | None = None) -> None:
    """save_pretrained: the Hub's layout, sharded with model.safetensors.index.json
    when the model is larger than `shard_bytes` (None: one file)."""
    shard = shard_bytes if shard_bytes else 1 << 62
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=shard)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def weight_files(folder: str) -> list[str]:
    """Every shard, from the index when there is one."""
    index = os.path.join(folder, INDEX)
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    else:
        names = ["model.safetensors"]
    return [os.path.join(folder, n) for n in names]


def assign(model: torch.nn.Module, state: dict[str, torch.Tensor], device: torch.device
           ) -> torch.nn.Module:
    """Put loaded tensors into the skeleton without copying them again."""
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint has tensors the model lacks: {result.unexpected_keys[:3]}")
    return models.finish(model, device)


def _skeleton(ctx: LoadContext, io_mode: str) -> torch.nn.Module:
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    ctx.io_mode = io_mode
    return model


def load(ctx: LoadContext) -> torch.nn.Module:
    from safetensors.torch import load_file
    model = _skeleton(ctx, "mmap (page cache)")
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(ctx.checkpoint.folder):
        state.update(load_file(path, device=str(ctx.device)))
    return assign(model, state, ctx.device)


def load_tp(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    """Tensor parallel: this rank's slices only, through safe_open(...).get_slice."""
    from safetensors import safe_open
    model = _skeleton(ctx, "mmap (page cache), safe_open().get_slice of the rank's slices")
    device = str(ctx.device)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(ctx.checkpoint.folder):
        with safe_open(path, framework="pt", device=device) as f:
            for name in f.keys():
                index = plan.index(name, f.get_slice(name).get_shape())
                tensor = f.get_tensor(name) if index is None else f.get_slice(name)[index]
                tensor = tensor.to(ctx.device)
                if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
                    # a view of more than the slice: keep only this rank's bytes
                    tensor = tensor.clone(memory_format=torch.contiguous_format)
                state[name] = tensor
    return plan.assign(model, state, ctx.device)
