"""fastsafetensors: files copied to the device in bulk, tensors instantiated in place.

Without GPUDirect Storage (FST_NOGDS=1, the default) it reads through a
bounce buffer with `max_threads` copy threads, as its README recommends for
machines without GDS.
"""

from __future__ import annotations

from typing import Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext
from loadbench.loaders.safetensors_lib import assign, weight_files

NAME = "fastsafetensors"
FORMAT = "safetensors"
PACKAGE = "fastsafetensors"


def import_package() -> None:
    import fastsafetensors  # noqa: F401


def load(ctx: LoadContext) -> torch.nn.Module:
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    kwargs: dict[str, Any] = {"nogds": bool(ctx.settings.get("FST_NOGDS", True))}
    if ctx.tuning.get("max_threads"):
        kwargs["max_threads"] = ctx.tuning["max_threads"]
    loader = SafeTensorsFileLoader(SingleGroup(), str(ctx.device), **kwargs)
    try:
        loader.add_filenames({0: weight_files(ctx.checkpoint.folder)})
        buffers = loader.copy_files_to_device()
        try:
            # Tensors share ownership of the device buffer and outlive close().
            state = {name: buffers.get_tensor(name) for name in loader.get_keys()}
        finally:
            buffers.close()
    finally:
        loader.close()
    return assign(model, state, ctx.device)
