"""fastsafetensors: files copied to the device in bulk, tensors instantiated in place.

Two choices decide its speed: GPUDirect Storage (`nogds`; without GDS it
reads through a bounce buffer with `max_threads` copy threads) and whether it
bypasses the page cache (`disable_cache`, True by default: O_DIRECT, so a
"warm" load still reads storage). Both are recorded in `io_mode`.
"""

from __future__ import annotations

from typing import Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext
from loadbench.loaders.safetensors_lib import assign, weight_files


def import_package() -> None:
    import fastsafetensors  # noqa: F401


def load(ctx: LoadContext) -> torch.nn.Module:
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    nogds = ctx.options.get("nogds")
    kwargs: dict[str, Any] = {"nogds": True if nogds is None else nogds}
    if ctx.options.get("cache") is not None:
        kwargs["disable_cache"] = not ctx.options["cache"]
    if ctx.options.get("max_threads"):
        kwargs["max_threads"] = ctx.options["max_threads"]
    loader = SafeTensorsFileLoader(SingleGroup(), str(ctx.device), **kwargs)
    cached = not kwargs.get("disable_cache", True)
    ctx.io_mode = (f"{'no GDS' if kwargs['nogds'] else 'GDS'}, "
                   f"{'page cache' if cached else 'O_DIRECT (skips the page cache)'}"
                   + (f", {kwargs['max_threads']} threads" if "max_threads" in kwargs else ""))
    ctx.info.update({k: v for k, v in kwargs.items()})
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
