"""The skeleton every loader fills is built inside the clock, without transformers'
weight initialisation: it must equal the fully initialised one on every built-in model."""

from __future__ import annotations

import pytest
import torch

from loadbench import models


@pytest.mark.parametrize("name", sorted(models.RANDOM_MODELS))
def test_fast_skeleton_equals_the_initialised_one(name):
    config = models.config_for(f"random/{name}")
    fast = models.skeleton(config, torch.bfloat16)
    slow = models.initialised_skeleton(config, torch.bfloat16)

    def params(m):
        return {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in
                m.named_parameters(remove_duplicate=False)}

    assert params(fast) == params(slow)
    assert all(device == "meta" for _, _, device in params(fast).values())
    fast_buffers, slow_buffers = dict(fast.named_buffers()), dict(slow.named_buffers())
    assert fast_buffers.keys() == slow_buffers.keys()
    for key, value in slow_buffers.items():
        assert fast_buffers[key].dtype == value.dtype and torch.equal(fast_buffers[key], value), key
    # Shared weights are one tensor in both (what a loader fills once).
    def tied(m):
        seen: dict[int, str] = {}
        pairs = set()
        for k, v in m.named_parameters(remove_duplicate=False):
            if id(v) in seen:
                pairs.add((seen[id(v)], k))
            seen.setdefault(id(v), k)
        return pairs
    assert tied(fast) == tied(slow)
    assert set(fast.state_dict()) == set(slow.state_dict())
