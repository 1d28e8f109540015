"""One module per loading library, all with the same small surface.

Each module defines NAME, FORMAT (the checkpoint folder it reads), PACKAGE
(the distribution whose version is recorded), `load(ctx)` and, for the
library that owns a format, `save(model, tokenizer, folder)`. Adding a
library touches its module and REGISTRY only.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

REGISTRY = {
    "tensorizer": "loadbench.libraries.tensorizer_lib",
    "safetensors": "loadbench.libraries.safetensors_lib",
    "huggingface": "loadbench.libraries.huggingface_lib",
    "huggingface-bin": "loadbench.libraries.huggingface_bin_lib",
    "fastsafetensors": "loadbench.libraries.fastsafetensors_lib",
    "runai-streamer": "loadbench.libraries.runai_lib",
}

# The library whose save() writes each checkpoint format.
FORMAT_OWNERS = {"tensorizer": "tensorizer", "safetensors": "safetensors", "bin": "huggingface-bin"}


class NotInstalled(RuntimeError):
    """The library's package is absent: reported in a result document, never a crash."""


def module(name: str) -> ModuleType:
    return importlib.import_module(REGISTRY[name])


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def require(name: str) -> ModuleType:
    """The library's module, with its package imported (outside any timed region)."""
    mod = module(name)
    try:
        mod.import_package()
    except ImportError as e:
        raise NotInstalled(
            f"library {name!r} is not installed ({e}); install the {mod.PACKAGE!r} package "
            f"(pip install -r requirements-peers.txt) or drop it from LIBRARIES") from e
    return mod


def formats_for(libraries: list[str]) -> list[str]:
    """The checkpoint formats the given libraries read, in a stable order."""
    needed = {module(lib).FORMAT for lib in libraries}
    return [fmt for fmt in FORMAT_OWNERS if fmt in needed]
