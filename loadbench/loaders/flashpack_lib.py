"""flashpack: its own flat format (one aligned block per dtype), streamed onto the device.

Saving writes each tensor once (tied names are stored once and re-tied on
load, as every other format does). On CUDA it reads with its own parallel
reader, deciding O_DIRECT or buffered from the file's residency; on a CPU it
would only map the file, so loadbench asks it to read eagerly, or the clock
would stop before a byte was read.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext, option_env, scoped_env
from loadbench.loaders.safetensors_lib import assign

FILE = "model.flashpack"
ENV = {"read_threads": "FLASHPACK_READ_THREADS", "chunk_bytes": "FLASHPACK_READ_CHUNK_BYTES",
       "direct_io": "FLASHPACK_DIRECT_IO"}


def import_package() -> None:
    import flashpack.deserialization  # noqa: F401


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each storage once (the first name wins), contiguous, on the host."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().cpu().contiguous()
    return out


def save(model: torch.nn.Module, tokenizer: Any, folder: str, shard_bytes: int | None = None) -> None:
    from flashpack import pack_to_file
    path = os.path.join(folder, FILE)
    pack_to_file(unique_state(model), path, None, silent=True)
    os.chmod(path, 0o640)  # it writes 0600; collectors of the pod's group must read it


def _env(ctx: LoadContext) -> dict[str, str | None]:
    env = option_env(ctx.options, ENV)
    if ctx.device.type == "cpu":
        env["FLASHPACK_CPU_PARALLEL_READ"] = "1"
    return env


def load(ctx: LoadContext) -> torch.nn.Module:
    from flashpack.deserialization import iterate_from_flash_tensor, read_flashpack_file
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    env = _env(ctx)
    direct = ctx.options.get("direct_io")
    ctx.io_mode = ("O_DIRECT" if direct else "buffered (page cache)" if direct is False
                   else "O_DIRECT or buffered, chosen from residency") + ", " + ", ".join(
        f"{opt}={ctx.options.get(opt) or 'default'}" for opt in ("read_threads", "chunk_bytes"))
    ctx.info.update({k: (v if v is not None else "library default") for k, v in env.items()})
    with scoped_env(env):
        storage, meta = read_flashpack_file(os.path.join(ctx.checkpoint.folder, FILE),
                                            device=str(ctx.device), silent=True)
        state = dict(iterate_from_flash_tensor(storage, meta))
    return assign(model, state, ctx.device)
