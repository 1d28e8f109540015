"""huggingface-bin: from_pretrained on a legacy pickle pytorch_model.bin.

transformers loads .bin files with torch.load(weights_only=True), so the
pickle cannot run code; this is the format many older checkpoints still use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from loadbench.loaders import huggingface_lib
from loadbench.loaders.context import LoadContext

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FILE = "pytorch_model.bin"


def import_package() -> None:
    huggingface_lib.import_package()


def save(model: PreTrainedModel, tokenizer: Any, folder: str, shard_bytes: int | None = None) -> None:
    # transformers 5 writes only safetensors; the legacy file is written by hand.
    model.config.save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, os.path.join(folder, FILE))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def load(ctx: LoadContext) -> torch.nn.Module:
    return huggingface_lib.from_pretrained(ctx, use_safetensors=False)
