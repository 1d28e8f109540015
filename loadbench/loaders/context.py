"""What a loader gets: the checkpoint, where to put it, and a clock to mark."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from loadbench.storage.checkpoint import Checkpoint


@dataclass
class LoadContext:
    checkpoint: Checkpoint
    device: torch.device
    dtype: torch.dtype
    tuning: dict[str, Any]
    settings: dict[str, Any]
    marks: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # what the library chose, recorded

    def mark(self, name: str) -> None:
        """Record a point inside the timed region (e.g. the skeleton is built)."""
        self.marks[name] = time.perf_counter()

    @property
    def config(self) -> Any:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(self.checkpoint.root)
