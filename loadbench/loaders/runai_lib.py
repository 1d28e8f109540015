"""runai-streamer: the Run:ai Model Streamer reading safetensors with many threads.

Tensors arrive in host memory and are copied to the device as they stream,
so reading and host-to-device copies overlap. The streamer reads its tuning
from environment variables when it starts streaming; they are set for this
load only and restored after, so a sweep's `default` run really gets the
streamer's default.
"""

from __future__ import annotations

import os

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext, option_env, scoped_env
from loadbench.loaders.safetensors_lib import assign, weight_files

ENV = {"concurrency": "RUNAI_STREAMER_CONCURRENCY", "chunk_bytes": "RUNAI_STREAMER_CHUNK_BYTESIZE"}


def import_package() -> None:
    import runai_model_streamer  # noqa: F401


def load(ctx: LoadContext) -> torch.nn.Module:
    from runai_model_streamer import SafetensorsStreamer
    env = option_env(ctx.options, ENV)
    ctx.info.update({k: (v if v is not None else "library default") for k, v in env.items()})
    ctx.io_mode = "buffered reads (page cache), " + ", ".join(
        f"{opt}={ctx.options.get(opt) or 'default'}" for opt in ENV)
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    non_blocking = ctx.device.type == "cuda"
    state: dict[str, torch.Tensor] = {}
    with scoped_env(env), SafetensorsStreamer() as streamer:
        # What the streamer reads when it starts: proves a sweep's `default` is the default.
        ctx.info["env_seen"] = {var: os.environ.get(var) for var in ENV.values()}
        streamer.stream_files(weight_files(ctx.checkpoint.folder))
        for name, tensor in streamer.get_tensors():
            state[name] = tensor.to(ctx.device, non_blocking=non_blocking)
    return assign(model, state, ctx.device)
