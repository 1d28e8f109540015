"""runai-streamer: the Run:ai Model Streamer reading safetensors with many threads.

Tensors arrive in host memory and are copied to the device as they stream,
so reading and host-to-device copies overlap. Concurrency is the streamer's
own RUNAI_STREAMER_CONCURRENCY, set from RUNAI_CONCURRENCY.
"""

from __future__ import annotations

import os

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext
from loadbench.loaders.safetensors_lib import assign, weight_files

NAME = "runai-streamer"
FORMAT = "safetensors"
PACKAGE = "runai-model-streamer"


def import_package() -> None:
    import runai_model_streamer  # noqa: F401


def load(ctx: LoadContext) -> torch.nn.Module:
    from runai_model_streamer import SafetensorsStreamer
    if ctx.tuning.get("concurrency"):
        os.environ["RUNAI_STREAMER_CONCURRENCY"] = str(ctx.tuning["concurrency"])
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    non_blocking = ctx.device.type == "cuda"
    state: dict[str, torch.Tensor] = {}
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(weight_files(ctx.checkpoint.folder))
        for name, tensor in streamer.get_tensors():
            state[name] = tensor.to(ctx.device, non_blocking=non_blocking)
    return assign(model, state, ctx.device)
