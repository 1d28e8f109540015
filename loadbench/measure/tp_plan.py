"""Which tensors a tensor-parallel rank holds, and which part of each.

The plan is the architecture's own, from transformers: the model's resolved
`tp_plan` (what `from_pretrained(..., tp_plan="auto")` applies: the config's
`base_model_tp_plan` under the base model's prefix, the CausalLM class's
`_tp_plan`, and the vocabulary split of the input embeddings that
transformers adds), or, where a version lacks that property, the config's
plan with the "model." prefix plus the class's `_tp_plan`.

Styles become split dimensions: colwise (colwise, colwise_rep,
colwise_gather_output) splits weight and bias on dim 0; rowwise (rowwise,
rowwise_rep, rowwise_split_input) splits the weight on its last dim (1) and
replicates the bias; embedding_rowwise splits dim 0, embedding_colwise dim 1.
Styles that keep parameters whole replicate them. Styles whose slices are not
plain ranges (packed, experts) are refused: a replicated stand-in would
disagree with what transformers loads.

Slices follow DTensor's Shard: ceil(size / world) per rank, the last ranks
shorter (or empty). The manifest stores, per TP size, every split tensor's
dim and per-rank slice checksums; replicated tensors are checked against the
whole-tensor checksums.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from loadbench.errors import BadInput

COLWISE = ("colwise", "colwise_rep", "colwise_gather_output")
ROWWISE = ("rowwise", "rowwise_rep", "rowwise_split_input")
EMBEDDING = {"embedding_rowwise": 0, "embedding_colwise": 1}
UNSUPPORTED = ("packed_colwise", "packed_rowwise", "moe_tp_experts")


class NoPlan(BadInput):
    """The architecture has no tensor-parallel plan, or one loadbench cannot slice."""


def _wildcard(name: str) -> str:
    """transformers' layer-number wildcard: model.layers.3.mlp -> model.layers.*.mlp."""
    return re.sub(r"\.\d+(\.|$)", lambda m: ".*" + m.group(1), name)


def model_plan(model: torch.nn.Module) -> dict[str, str]:
    """The module name -> style plan transformers applies to this model."""
    plan = getattr(model, "tp_plan", None)
    if isinstance(plan, Mapping) and plan:
        return dict(plan)
    config = model.config
    prefix = getattr(model, "base_model_prefix", "") or "model"
    out = {f"{prefix}.{k}": v for k, v in (getattr(config, "base_model_tp_plan", None) or {}).items()}
    out.update(getattr(type(model), "_tp_plan", None) or {})
    return out


def style_of(name: str, plan: Mapping[str, str]) -> str | None:
    """transformers' matching: the parameter's own entry, else its module's."""
    generic = _wildcard(name)
    if generic in plan:
        return plan[generic]
    module = generic.rsplit(".", 1)[0] if "." in generic else None
    return plan.get(module) if module else None


def split_dim(name: str, style: str | None, ndim: int) -> int | None:
    """The dimension a style splits this tensor on; None: replicated."""
    if style is None or ndim == 0:
        return None
    leaf = name.rsplit(".", 1)[-1]
    if style in COLWISE:
        return max(ndim - 2, 0)
    if style in ROWWISE:
        return None if leaf == "bias" else ndim - 1
    if style in EMBEDDING:
        return EMBEDDING[style] if EMBEDDING[style] < ndim else None
    if style in UNSUPPORTED:
        raise NoPlan(f"{name}: tensor-parallel style {style!r} is not supported by loadbench yet (its "
                     f"slices are not plain ranges); TP_SIZE>1 cannot be measured for this architecture")
    return None


def split_dims(model: torch.nn.Module, state: Mapping[str, torch.Tensor] | None = None
               ) -> dict[str, tuple[int | None, str | None]]:
    """Every tensor of the model's state -> (split dim or None, style or None)."""
    plan = model_plan(model)
    if not plan:
        arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
        raise NoPlan(f"{arch} has no tensor-parallel plan in transformers (no base_model_tp_plan "
                     f"in its config, no _tp_plan): TP_SIZE>1 needs one; use TP_SIZE=1 or an "
                     f"architecture with a plan (e.g. random/llama-2-13b)")
    state = state if state is not None else dict(model.state_dict())
    out = {}
    for name, tensor in state.items():
        style = style_of(name, plan)
        out[name] = (split_dim(name, style, tensor.dim()), style)
    return out


def bounds(size: int, rank: int, world: int) -> tuple[int, int]:
    """(start, length) of rank's part of `size` rows, as DTensor's Shard places it."""
    per = -(-size // world)
    start = min(rank * per, size)
    return start, min(size, start + per) - start


def slice_checksums(state: Mapping[str, torch.Tensor], dims: Mapping[str, tuple[int | None, str | None]],
                    world: int) -> dict[str, dict[str, Any]]:
    """The manifest's `tp[<world>]`: per split tensor, its dim, style and per-rank slices."""
    from loadbench.measure.checksums import tensor_checksum
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(state):
        dim, style = dims[name]
        if dim is None:
            continue
        tensor = state[name]
        slices = []
        for rank in range(world):
            start, length = bounds(tensor.shape[dim], rank, world)
            part = tensor.narrow(dim, start, length).contiguous()
            slices.append({"checksum": tensor_checksum(part), "shape": list(part.shape), "start": start})
        out[name] = {"dim": dim, "style": style, "slices": slices}
    return out


def rank_state(state: Mapping[str, torch.Tensor], dims: Mapping[str, tuple[int | None, str | None]],
               rank: int, world: int) -> dict[str, torch.Tensor]:
    """One rank's tensors, contiguous: its slices of split tensors, replicated ones whole."""
    out = {}
    for name, tensor in state.items():
        dim = dims[name][0]
        if dim is None:
            out[name] = tensor.contiguous()
        else:
            start, length = bounds(tensor.shape[dim], rank, world)
            out[name] = tensor.narrow(dim, start, length).contiguous()
    return out


@dataclass(frozen=True)
class RankPlan:
    """What one rank loads, from the manifest's `tp` entry for its TP size.

    Loaders get this object (`load_tp(ctx, rank, world, plan)`): `dims` names
    every tensor of the checkpoint with its split dim (None: whole), `bounds`
    gives this rank's range, `assign` puts loaded tensors into a skeleton."""
    rank: int
    world: int
    dims: Mapping[str, int | None]
    expected: Mapping[str, Mapping[str, Any]] = field(repr=False)  # like manifest["tensors"], local shapes

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], rank: int, world: int) -> RankPlan:
        entry = (manifest.get("tp") or {}).get(str(world))
        if entry is None:
            from loadbench.errors import CheckpointError
            saved = ", ".join(sorted(manifest.get("tp") or {})) or "none"
            raise CheckpointError(f"the checkpoint has no tensor-parallel layout for TP_SIZE={world} "
                                  f"(saved for: {saved}); run save_models.py with TP_SIZE={world}")
        dims: dict[str, int | None] = {}
        expected: dict[str, dict[str, Any]] = {}
        for name, whole in manifest["tensors"].items():
            split = entry.get(name)
            if split is None:
                dims[name] = None
                expected[name] = whole
            else:
                part = split["slices"][rank]
                dims[name] = int(split["dim"])
                expected[name] = {"dtype": whole["dtype"], "shape": list(part["shape"]),
                                  "checksum": part["checksum"]}
        return cls(rank, world, dims, expected)

    def bounds(self, name: str, shape: tuple[int, ...] | list[int]) -> tuple[int, int] | None:
        """(start, length) on the split dim for this rank; None when `name` is whole."""
        dim = self.dims.get(name)
        if dim is None:
            return None
        return bounds(int(shape[dim]), self.rank, self.world)

    def index(self, name: str, shape: tuple[int, ...] | list[int]) -> tuple[slice, ...] | None:
        """The slicing tuple for this rank (for `safe_open().get_slice(name)[index]`)."""
        b = self.bounds(name, shape)
        if b is None:
            return None
        dim = self.dims[name]
        return tuple([slice(None)] * dim + [slice(b[0], b[0] + b[1])])  # type: ignore[operator]

    def narrow(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        b = self.bounds(name, tuple(tensor.shape))
        return tensor if b is None else tensor.narrow(self.dims[name], b[0], b[1])  # type: ignore[arg-type]

    def assign(self, model: torch.nn.Module, state: Mapping[str, torch.Tensor], device: torch.device
               ) -> torch.nn.Module:
        """Put this rank's tensors into a meta skeleton as they are (sliced shapes included)."""
        from loadbench import models
        unknown = []
        for name, tensor in state.items():
            owner_name, _, leaf = name.rpartition(".")
            try:
                owner = model.get_submodule(owner_name) if owner_name else model
            except AttributeError:
                unknown.append(name)
                continue
            if leaf in owner._parameters:
                owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
            elif leaf in owner._buffers:
                owner._buffers[leaf] = tensor
            else:
                unknown.append(name)
        if unknown:
            raise RuntimeError(f"checkpoint has tensors the model lacks: {unknown[:3]}")
        return models.finish(model, device)
