"""tensorizer: TensorDeserializer streaming into a meta-device skeleton."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

import torch

from loadbench import models
from loadbench.loaders.context import LoadContext, TPPlan

FILE = "model.tensors"


def import_package() -> None:
    import tensorizer  # noqa: F401


def save(model: torch.nn.Module, tokenizer: Any, folder: str, shard_bytes: int | None = None) -> None:
    from tensorizer import TensorSerializer
    serializer = TensorSerializer(os.path.join(folder, FILE))
    with _untied(model):
        # Non-persistent buffers are recomputed by the skeleton, as in every other format.
        serializer.write_module(model, include_non_persistent_buffers=False)
    serializer.close()


@contextlib.contextmanager
def _untied(model: torch.nn.Module) -> Iterator[None]:
    """Hide the second name of tied weights, so they are written once.

    write_module walks every module's own parameters, so OPT's lm_head would
    otherwise be stored twice; the loader re-ties it (models.finish).
    """
    seen: set[int] = set()
    hidden: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) in seen:
                hidden.append((module, name, param))
                del module._parameters[name]
            seen.add(id(param))
    try:
        yield
    finally:
        for module, name, param in hidden:
            module._parameters[name] = param


@contextlib.contextmanager
def _deserializer(ctx: LoadContext, source: Callable[[], Any], reads: str) -> Iterator[Any]:
    """TensorDeserializer over what `source()` opens (a path, or a stream opened only now, after
    the skeleton), closed however the load ends; a stream the constructor refused is closed too."""
    from tensorizer import TensorDeserializer
    kwargs: dict[str, Any] = {"device": ctx.device, "verify_hash": bool(ctx.options.get("verify_hash"))}
    if ctx.options.get("num_readers"):
        kwargs["num_readers"] = ctx.options["num_readers"]
    opened = source()
    try:
        deserializer = TensorDeserializer(opened, **kwargs)
    except BaseException:
        if hasattr(opened, "close"):
            opened.close()
        raise
    readers = getattr(deserializer, "_num_readers", None)
    ctx.info["num_readers"] = readers
    ctx.io_mode = f"{reads}, {readers} reader(s)"
    try:
        yield deserializer
    finally:
        deserializer.close()


def _deserialize(ctx: LoadContext, source: Callable[[], Any], reads: str) -> torch.nn.Module:
    """A skeleton, then the whole file loaded into it."""
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    with _deserializer(ctx, source, reads) as deserializer:
        deserializer.load_into_module(model)
    return models.finish(model, ctx.device)


def load(ctx: LoadContext) -> torch.nn.Module:
    return _deserialize(ctx, lambda: os.path.join(ctx.checkpoint.folder, FILE), "buffered reads (page cache)")


# --- object storage (MODEL_URI, S3_CACHE=none) ---------------------------------------------------
# tensorizer's own S3 path (stream_io): boto3 only presigns the GET; the `curl` binary streams it,
# and each extra reader is another curl on a byte range of the same URL.

def _presigned(ctx: LoadContext, name: str) -> tuple[Any, str]:
    """(what opens a stream of object `name` of ctx.remote, how it is read). Presigned with loadbench's own
    client (its endpoint, region, addressing and session token), so tensorizer's curl streams
    exactly the object the rest of the run reads; left to itself, tensorizer would fall back to
    its own default endpoint where none is configured."""
    from tensorizer import stream_io

    from loadbench.storage.objectstore import parse_uri
    remote = ctx.remote
    if remote is None:
        raise ValueError("tensorizer's object-storage loads need ctx.remote (a MODEL_URI source)")
    obj = parse_uri(remote.object(name))
    url = remote.client.generate_presigned_url("get_object", Params={"Bucket": obj.bucket, "Key": obj.prefix},
                                               ExpiresIn=6 * 3600)
    return (lambda: stream_io.open_stream(url, "rb"),
            f"stream_io from {remote.describe()} (a presigned GET streamed by curl)")


def load_s3(ctx: LoadContext) -> torch.nn.Module:
    return _deserialize(ctx, *_presigned(ctx, FILE))


# --- tensor parallel (TP_SIZE>1) ------------------------------------------------------------
# As vLLM does with tensorizer: one file per rank, written by save_models.py for the TP size,
# holding only that rank's slices (split tensors) and the replicated tensors whole.

def tp_file(rank: int, world: int) -> str:
    return f"rank-{rank}-of-{world}.tensors"


def save_tp(state: dict[str, torch.Tensor], folder: str, rank: int, world: int) -> None:
    from tensorizer import TensorSerializer
    serializer = TensorSerializer(os.path.join(folder, tp_file(rank, world)))
    serializer.write_state_dict(state)
    serializer.close()


def _deserialize_rank(ctx: LoadContext, plan: TPPlan, source: Callable[[], Any], name: str, reads: str
                      ) -> torch.nn.Module:
    """This rank's file, deserialized onto its device, assigned into a meta skeleton."""
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    ctx.info["file"] = name
    with _deserializer(ctx, source, f"{reads} of its per-rank file") as deserializer:
        state = dict(deserializer.items())
    return plan.assign(model, state, ctx.device)


def load_tp(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    name = tp_file(rank, world)
    return _deserialize_rank(ctx, plan, lambda: os.path.join(ctx.checkpoint.folder, name), name,
                             "buffered reads (page cache)")


def load_tp_s3(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    """Each rank streams only its own per-rank object: no rank reads another's bytes."""
    name = tp_file(rank, world)
    opener, reads = _presigned(ctx, name)
    return _deserialize_rank(ctx, plan, opener, name, reads)
