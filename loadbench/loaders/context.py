"""What a loader gets: the checkpoint, where to put it, its typed options, and a clock to mark."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

import torch

from loadbench.storage.checkpoint import Checkpoint


@dataclass(frozen=True)
class Remote:
    """A checkpoint's format folder in object storage, for a library that reads it itself
    (its registry entry says reads_s3): where it is, the client to reach it, and the files."""
    uri: str                                 # s3://bucket/prefix/<format>
    client: Any                              # a boto3 S3 client (thread-safe)
    endpoint_url: str | None                 # None: AWS itself
    concurrency: int                         # S3_CONCURRENCY: requests in flight
    part_bytes: int                          # S3_PART_BYTES: bytes per ranged request
    objects: tuple[tuple[str, int], ...]     # (file name, bytes) of the weight files, from the manifest

    def object(self, name: str) -> str:
        return f"{self.uri.rstrip('/')}/{name}"

    def describe(self) -> str:
        from loadbench.storage.objectstore import redact
        return redact(self.endpoint_url) if self.endpoint_url else "AWS S3"

    def credentials(self) -> tuple[str | None, str | None, str | None]:
        """(access key, secret, session token) the client signs with, for a library that makes
        its own requests; never written anywhere."""
        creds = getattr(getattr(self.client, "_request_signer", None), "_credentials", None)
        if creds is None:
            return None, None, None
        frozen = creds.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token


@dataclass
class LoadContext:
    checkpoint: Checkpoint
    device: torch.device
    dtype: torch.dtype
    options: Mapping[str, Any] = field(default_factory=dict)  # None: the library's own default
    marks: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # what the library chose, recorded
    io_mode: str | None = None  # how the library reads: recorded and shown in reports
    remote: Remote | None = None  # set when the library reads object storage itself (load_s3)
    _config: Any = None

    def mark(self, name: str) -> None:
        """Record a point inside the timed region (e.g. the skeleton is built)."""
        self.marks[name] = time.perf_counter()

    @property
    def config(self) -> Any:
        if self._config is None:
            from transformers import AutoConfig
            self._config = AutoConfig.from_pretrained(self.checkpoint.root)
        return self._config


class TPPlan(Protocol):
    """What `load_tp(ctx, rank, world, plan)` gets: this rank's share of every tensor
    (measure/tp_plan.py's RankPlan is the one implementation)."""

    @property
    def dims(self) -> Mapping[str, int | None]:
        """Every tensor's split dim; None: the tensor is whole on every rank."""

    def bounds(self, name: str, shape: tuple[int, ...] | list[int]) -> tuple[int, int] | None:
        """(start, length) on the split dim for this rank; None when `name` is whole."""

    def index(self, name: str, shape: tuple[int, ...] | list[int]) -> tuple[slice, ...] | None:
        """The slicing tuple of this rank's part (None: whole)."""

    def narrow(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's part of a whole tensor."""

    def assign(self, model: torch.nn.Module, state: Mapping[str, torch.Tensor], device: torch.device
               ) -> torch.nn.Module:
        """Put this rank's tensors into a meta skeleton."""


def option_env(options: Mapping[str, Any], variables: Mapping[str, str]) -> dict[str, str | None]:
    """The library's environment variables for these options (option field -> variable):
    None where the option is unset, so the library's own default applies; booleans as 1/0."""
    out: dict[str, str | None] = {}
    for field_name, var in variables.items():
        value = options.get(field_name)
        if isinstance(value, bool):
            value = int(value)
        out[var] = None if value is None else str(value)
    return out


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) variables for one load, then restore them exactly.

    Libraries that read their tuning from the environment get it for this load
    only: in a sweep, the `default` variant really runs with the default."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _put_env(values)
        yield
    finally:
        _put_env(saved)


def _put_env(values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
