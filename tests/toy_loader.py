"""A test-only loader, one module and one entry: plain `safetensors.torch.load_file` of the
safetensors checkpoint, assigned into a meta skeleton.

It reaches a process through LOADBENCH_PLUGINS=tests.toy_loader (the registry imports this module
and registers `LIBRARIES`), or in-process through `loaders.register(ENTRY)`. Nothing else in the
package names it: that is what tests/e2e/test_toy_loader.py proves.
"""

from __future__ import annotations

import torch

from loadbench import models
from loadbench.loaders import Library, Option
from loadbench.loaders.context import LoadContext

NAME = "toy"

ENTRY = Library(NAME, __name__, "safetensors", "safetensors", False,
                "test-only: safetensors.torch.load_file into a meta skeleton",
                (Option("files_at_once", "TOY_FILES_AT_ONCE", "int",
                        "toy (tests only): accepted and recorded, changes nothing."),))
LIBRARIES = (ENTRY,)


GC_AT_IMPORT: list[bool] = []  # was the collector on when the pod imported this library?


def import_package() -> None:
    import gc

    import safetensors.torch  # noqa: F401
    GC_AT_IMPORT.append(gc.isenabled())


def load(ctx: LoadContext) -> torch.nn.Module:
    from safetensors.torch import load_file
    model = models.skeleton(ctx.config, ctx.dtype)
    ctx.mark("skeleton")
    state: dict[str, torch.Tensor] = {}
    for path in ctx.checkpoint.weight_files:
        state.update(load_file(path, device=str(ctx.device)))
    ctx.io_mode = "toy: load_file, mmap (page cache)"
    ctx.info["files_at_once"] = ctx.options.get("files_at_once")
    import gc
    ctx.info["gc"] = {"at_import": GC_AT_IMPORT[:1], "in_load": gc.isenabled(),
                      "frozen": gc.get_freeze_count()}
    unexpected = model.load_state_dict(state, strict=False, assign=True).unexpected_keys
    if unexpected:
        raise RuntimeError(f"the checkpoint has tensors the model lacks: {unexpected[:3]}")
    return models.finish(model, ctx.device)
