"""huggingface: from_pretrained on the safetensors checkpoint, as most users load today."""

from __future__ import annotations

import torch

from loadbench.loaders.context import LoadContext, TPPlan


def import_package() -> None:
    import transformers
    # A progress bar redrawn inside the timed region is not what users wait for.
    transformers.utils.logging.disable_progress_bar()


def from_pretrained(ctx: LoadContext, **kwargs: object) -> torch.nn.Module:
    # Skeleton and weights are one call here: the whole of it is weights_s.
    from transformers import AutoModelForCausalLM
    ctx.io_mode = "mmap (page cache)" if kwargs.get("use_safetensors") else "torch.load, mmap (page cache)"
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
        ctx.checkpoint.folder, dtype=ctx.dtype, device_map=str(ctx.device), **kwargs)
    return model.eval()


def load(ctx: LoadContext) -> torch.nn.Module:
    return from_pretrained(ctx, use_safetensors=True)


def load_tp(ctx: LoadContext, rank: int, world: int, plan: TPPlan) -> torch.nn.Module:
    """Tensor parallel the transformers way: from_pretrained with its "auto" TP plan, each rank
    loading its shards (DTensor parameters) on the process group loadbench started."""
    from transformers import AutoModelForCausalLM

    from loadbench.errors import BadInput
    found = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
    accelerator = found.type if found is not None else "cpu"
    if accelerator != ctx.device.type:
        raise BadInput(f"transformers' tensor-parallel loading places each rank on the visible "
                       f"accelerator ({accelerator}), not on DEVICE={ctx.device}: run with DEVICE="
                       f"{accelerator}, or hide the accelerator")
    try:
        from transformers.distributed import DistributedConfig
        kwargs: dict[str, object] = {"distributed_config": DistributedConfig(tp_plan="auto", tp_size=world)}
        ctx.info["api"] = "from_pretrained(distributed_config=DistributedConfig(tp_plan='auto'))"
    except ImportError:  # older transformers: the plain argument
        kwargs = {"tp_plan": "auto"}
        ctx.info["api"] = "from_pretrained(tp_plan='auto')"
    ctx.io_mode = "mmap (page cache), transformers' own tensor-parallel sharding (tp_plan='auto')"
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
        ctx.checkpoint.folder, dtype=ctx.dtype, use_safetensors=True, **kwargs)
    return model.eval()
