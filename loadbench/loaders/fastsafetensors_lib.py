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
from loadbench.loaders.context import LoadContext, TPPlan, option_env, scoped_env
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


def _options(ctx: LoadContext, files: list[str]) -> tuple[dict[str, Any], dict[str, str | None], str]:
    """(loader kwargs, its environment, the I/O mode it will use) for these options."""
    nogds = ctx.options.get("nogds")
    kwargs: dict[str, Any] = {"nogds": True if nogds is None else nogds}
    if ctx.options.get("max_threads"):
        kwargs["max_threads"] = ctx.options["max_threads"]
    env = option_env(ctx.options, {"odirect": ODIRECT})
    with scoped_env(env):
        direct = _reads_direct(files[0])
    reads = {True: "O_DIRECT (skips the page cache)", False: "buffered (page cache)",
             None: "reads as its version decides"}[direct]
    ctx.info.update(kwargs, odirect=direct, env_seen={ODIRECT: env[ODIRECT]})
    mode = (f"{'no GDS' if kwargs['nogds'] else 'GDS'}, {reads}"
            + (f", {kwargs['max_threads']} threads" if "max_threads" in kwargs else ""))
    return kwargs, env, mode


def load(ctx: LoadContext) -> torch.nn.Module:
    from fastsafetensors import SafeTensorsFileLoader, SingleGroup
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    files = weight_files(ctx.checkpoint.folder)
    kwargs, env, ctx.io_mode = _options(ctx, files)
    with scoped_env(env):
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


# --- tensor parallel (TP_SIZE>1) ------------------------------------------------------------
# Its own process-group path: the files are dealt out to the ranks (rank r owns files r, r+W,
# ...), each rank reads only the files it owns, and every split tensor's slices are sent from
# its owner to the other ranks (get_sharded: one dist.scatter per tensor); whole tensors are
# broadcast. Its blocks are ceil(size / W), as the plan's; a split it cannot scatter (a size
# the ranks do not divide) is broadcast whole and narrowed, and counted.

def load_tp(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    import torch.distributed as dist
    from fastsafetensors import SafeTensorsFileLoader
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    files = weight_files(ctx.checkpoint.folder)
    kwargs, env, mode = _options(ctx, files)
    owned = {r: files[r::world] for r in range(world)}
    shapes = {name: meta["shape"] for name, meta in ctx.checkpoint.tensors.items()}
    state: dict[str, torch.Tensor] = {}
    uneven = 0
    with scoped_env(env):
        loader = SafeTensorsFileLoader(dist.group.WORLD, str(ctx.device), **kwargs)
        try:
            loader.add_filenames(owned)
            buffers = loader.copy_files_to_device()
            try:
                for name in loader.get_keys():  # the same order on every rank: collectives pair up
                    dim = plan.dims.get(name)
                    if dim is None:
                        state[name] = buffers.get_tensor(name)
                    elif shapes[name][dim] % world == 0:
                        state[name] = buffers.get_sharded(name, dim)
                    else:
                        state[name] = plan.narrow(name, buffers.get_tensor(name)).contiguous()
                        uneven += 1
            finally:
                buffers.close()
        finally:
            loader.close()
    ctx.io_mode = (f"{mode}; its process-group loader: each rank reads the files it owns "
                   f"({len(owned[rank])} of {len(files)} here) and scatters the slices")
    ctx.info.update(files_owned=len(owned[rank]), files=len(files), broadcast_then_narrowed=uneven)
    return plan.assign(model, state, ctx.device)
