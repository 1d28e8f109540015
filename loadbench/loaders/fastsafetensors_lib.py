"""fastsafetensors: files copied to the device in bulk, tensors instantiated in place.

Two choices decide its speed: GPUDirect Storage (`nogds`; without GDS it
reads through a bounce buffer with `max_threads` copy threads) and whether it
reads with O_DIRECT, skipping the page cache. The latter is its
FASTSAFETENSORS_ODIRECT variable: by default it uses O_DIRECT on local and
unknown filesystems, so a "warm" load still reads storage. (Its
`disable_cache` argument is not that switch: it caches loaded tensors in GPU
memory for reuse.) The library's own answer for the checkpoint's file is
recorded in `io_mode`.
"""

from __future__ import annotations

from typing import Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext, option_env, scoped_env
from loadbench.loaders.safetensors_lib import assign, weight_files

ODIRECT = "FASTSAFETENSORS_ODIRECT"


def import_package() -> None:
    import fastsafetensors  # noqa: F401


def _reads_direct(path: str) -> bool | None:
    """What the library decides for this file (None where the version has no such policy)."""
    try:
        from fastsafetensors.common import is_odirect_enabled
    except ImportError:
        return None
    return bool(is_odirect_enabled(path))


def load(ctx: LoadContext) -> torch.nn.Module:
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    nogds = ctx.options.get("nogds")
    kwargs: dict[str, Any] = {"nogds": True if nogds is None else nogds}
    if ctx.options.get("max_threads"):
        kwargs["max_threads"] = ctx.options["max_threads"]
    env = option_env(ctx.options, {"odirect": ODIRECT})
    files = weight_files(ctx.checkpoint.folder)
    with scoped_env(env):
        direct = _reads_direct(files[0])
        reads = {True: "O_DIRECT (skips the page cache)", False: "buffered (page cache)",
                 None: "reads as its version decides"}[direct]
        ctx.io_mode = (f"{'no GDS' if kwargs['nogds'] else 'GDS'}, {reads}"
                       + (f", {kwargs['max_threads']} threads" if "max_threads" in kwargs else ""))
        ctx.info.update(kwargs, odirect=direct, env_seen={ODIRECT: env[ODIRECT]})
        loader = SafeTensorsFileLoader(SingleGroup(), str(ctx.device), **kwargs)
        try:
            loader.add_filenames({0: files})
            buffers = loader.copy_files_to_device()
            try:
                # Tensors share ownership of the device buffer and outlive close().
                state = {name: buffers.get_tensor(name) for name in loader.get_keys()}
            finally:
                buffers.close()
        finally:
            loader.close()
    return assign(model, state, ctx.device)
