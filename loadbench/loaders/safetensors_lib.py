"""safetensors: each file read straight onto the device, assigned into a skeleton."""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext

NAME = "safetensors"
FORMAT = "safetensors"
PACKAGE = "safetensors"
WEIGHT_SUFFIXES = (".safetensors",)


def import_package() -> None:
    import safetensors.torch  # noqa: F401


def save(model: torch.nn.Module, tokenizer: Any, folder: str) -> None:
    """save_pretrained: the layout the Hub uses (sharded with an index when large)."""
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
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


def load(ctx: LoadContext) -> torch.nn.Module:
    from safetensors.torch import load_file
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    device = str(ctx.device)
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(ctx.checkpoint.folder):
        state.update(load_file(path, device=device))
    return assign(model, state, ctx.device)
