"""instanttensor: one `safe_open` over every shard, pipelined I/O into a GPU ring buffer.

Its I/O backend decides whether it uses the page cache at all: URING and AIO
(its defaults on a disk) open files with O_DIRECT, so a "warm" load still
reads storage; URING_BUFFERED, AIO_BUFFERED and MMAP read through the page
cache. The backend it ran with is recorded. It loads only onto CUDA devices.
"""

from __future__ import annotations

from typing import Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext
from loadbench.loaders.safetensors_lib import assign, weight_files

DIRECT = {"URING", "AIO", "CUFILE"}


def import_package() -> None:
    import instanttensor  # noqa: F401


def io_mode(backend: str) -> str:
    if backend in DIRECT:
        return f"{backend} (O_DIRECT, skips the page cache)"
    return f"{backend} (page cache)"


def load(ctx: LoadContext) -> torch.nn.Module:
    from instanttensor import Backend, safe_open
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    kwargs: dict[str, Any] = {}
    if ctx.options.get("backend"):
        kwargs["backend"] = getattr(Backend, ctx.options["backend"])
    if ctx.options.get("buffer_bytes"):
        kwargs["buffer_size"] = ctx.options["buffer_bytes"]
    if ctx.options.get("concurrency"):
        kwargs["concurrency"] = ctx.options["concurrency"]
    state: dict[str, torch.Tensor] = {}
    # It sorts the list in place and starts reading in the constructor: both inside the clock.
    with safe_open(list(weight_files(ctx.checkpoint.folder)), framework="pt", device=ctx.device,
                   **kwargs) as f:
        chosen = str(getattr(f, "backend", ctx.options.get("backend") or "default")).split(".")[-1]
        ctx.info.update(backend=chosen, buffer_size=getattr(f, "buffer_size", None),
                        concurrency=getattr(f, "concurrency", None), io_depth=getattr(f, "io_depth", None))
        for name, tensor in f.tensors():  # copy=True: each tensor owns its memory
            state[name] = tensor
    ctx.io_mode = io_mode(chosen)
    return assign(model, state, ctx.device)
