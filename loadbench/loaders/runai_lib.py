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
from loadbench.loaders.context import LoadContext, TPPlan, option_env, scoped_env
from loadbench.loaders.safetensors_lib import assign, weight_files

ENV = {"concurrency": "RUNAI_STREAMER_CONCURRENCY", "chunk_bytes": "RUNAI_STREAMER_CHUNK_BYTESIZE"}


def import_package() -> None:
    import runai_model_streamer  # noqa: F401


def _tuning(ctx: LoadContext) -> tuple[dict[str, str | None], str]:
    """Its environment for these options (recorded in ctx.info), and the options as io_mode says them."""
    env = option_env(ctx.options, ENV)
    ctx.info.update({k: (v if v is not None else "library default") for k, v in env.items()})
    return env, ", ".join(f"{opt}={ctx.options.get(opt) or 'default'}" for opt in ENV)


def load(ctx: LoadContext) -> torch.nn.Module:
    from runai_model_streamer import SafetensorsStreamer
    env, tuned = _tuning(ctx)
    ctx.io_mode = f"buffered reads (page cache), {tuned}"
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


# --- object storage (MODEL_URI, S3_CACHE=none) ---------------------------------------------------
# Its native S3 backend (the runai-model-streamer-s3 package): header, then one ranged GET per
# tensor from its C++ client, RUNAI_STREAMER_CONCURRENCY of them in flight. The credentials go in
# an S3Credentials object, never the environment; the endpoint (which it reads from
# AWS_ENDPOINT_URL per request) and path-style addressing are set for this load only.

def load_s3(ctx: LoadContext) -> torch.nn.Module:
    from runai_model_streamer import SafetensorsStreamer
    from runai_model_streamer.s3_utils.s3_utils import S3Credentials
    remote = ctx.remote
    if remote is None:
        raise ValueError("runai-streamer.load_s3 needs ctx.remote (a MODEL_URI source)")
    env, tuned = _tuning(ctx)
    if remote.endpoint_url:
        env.update(AWS_ENDPOINT_URL=remote.endpoint_url, RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0")
    key, secret, token = remote.credentials()
    region = getattr(getattr(remote.client, "meta", None), "region_name", None) or "us-east-1"
    creds = S3Credentials(access_key_id=key, secret_access_key=secret, session_token=token,
                          region_name=region, endpoint=remote.endpoint_url)
    ctx.io_mode = f"native S3 from {remote.describe()}, ranged GETs, {tuned}"
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    non_blocking = ctx.device.type == "cuda"
    state: dict[str, torch.Tensor] = {}
    paths = [remote.object(name) for name, _ in remote.objects if name.endswith(".safetensors")]
    try:
        with scoped_env(env), SafetensorsStreamer() as streamer:
            streamer.stream_files(paths, s3_credentials=creds)
            for name, tensor in streamer.get_tensors():
                state[name] = tensor.to(ctx.device, non_blocking=non_blocking)
    except ValueError as e:
        if "S3 not supported" in str(e):
            raise RuntimeError("runai-streamer cannot read S3 here: install runai-model-streamer-s3 "
                               "(requirements-peers.txt), or set S3_READ=download") from e
        raise
    return assign(model, state, ctx.device)


# --- tensor parallel (TP_SIZE>1) ------------------------------------------------------------
# Its distributed streaming (RUNAI_STREAMER_DIST=1): the ranks on a node split the tensors
# between them, each reads only its share from storage and broadcasts it, so every rank receives
# every tensor and keeps its own slices. The tensors it yields are views of its reused broadcast
# buffers, so the slices are copied out.

def load_tp(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    from runai_model_streamer import SafetensorsStreamer
    env, tuned = _tuning(ctx)
    env["RUNAI_STREAMER_DIST"] = "1"  # its "auto" distributes over NCCL only; gloo needs 1
    env["RUNAI_STREAMER_DIST_GLOBAL"] = "1"  # one group of every rank, not one per host name
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    state: dict[str, torch.Tensor] = {}
    with scoped_env(env), SafetensorsStreamer() as streamer:
        streamer.stream_files(weight_files(ctx.checkpoint.folder), device=str(ctx.device),
                              is_distributed=True)
        # It falls back to every rank reading everything (too little free memory, a backend
        # that does not match the device) without a word: record what it did.
        inner = getattr(streamer, "file_streamer", None)
        distributed = bool(getattr(inner, "is_distributed", False))
        ctx.info.update(distributed=distributed,
                        group_size=inner.get_group_size() if distributed and inner is not None else 1)
        for name, tensor in streamer.get_tensors():
            state[name] = plan.narrow(name, tensor).to(ctx.device).clone()
    how = ("each rank reads a share of the tensors and broadcasts it" if distributed else
           "asked, NOT used: every rank read every tensor")
    ctx.io_mode = (f"distributed streaming (RUNAI_STREAMER_DIST=1): {how}, every rank keeps its "
                   f"slices, {tuned}")
    return plan.assign(model, state, ctx.device)
