"""huggingface: from_pretrained on the safetensors checkpoint, as most users load today."""

from __future__ import annotations

import torch

from loadbench.loaders.context import LoadContext


def import_package() -> None:
    import transformers
    # A progress bar redrawn inside the timed region is not what users wait for.
    transformers.utils.logging.disable_progress_bar()


def from_pretrained(ctx: LoadContext, **kwargs: object) -> torch.nn.Module:
    # Skeleton and weights are one call here: the whole of it is weights_s.
    from transformers import AutoModelForCausalLM
    ctx.io_mode = "mmap (page cache)" if kwargs.get("use_safetensors") else "torch.load, mmap (page cache)"
    model = AutoModelForCausalLM.from_pretrained(
        ctx.checkpoint.folder, dtype=ctx.dtype, device_map=str(ctx.device), **kwargs)
    return model.eval()


def load(ctx: LoadContext) -> torch.nn.Module:
    return from_pretrained(ctx, use_safetensors=True)
