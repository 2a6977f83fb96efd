"""Validation embeds the held-out images the same way with and without the frozen-prefix cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agebias.finetune.cache import build_cache
from agebias.finetune.epoch_end import Validate
from agebias.finetune.freeze import freeze, parse_frozen_layers, run_stages
from agebias.models.preprocess import to_tensor
from agebias.models.registry import create_backbone
from agebias.precision import prefix_channels_last


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_validation_embeddings_are_the_same_with_and_without_the_cache(precision):
    torch.manual_seed(0)
    model = create_backbone("iresnet:1,1,1,1")  # full width: there channels-last and contiguous round differently
    depth = freeze(model, parse_frozen_layers("1,2,3")).prefix_depth
    model.eval()
    crops = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None
    layout = prefix_channels_last(precision, "cpu")
    assert layout  # on CPU the prefix always takes channels-last images
    with torch.no_grad():
        shape = tuple(run_stages(model, to_tensor(crops[:1]), 0, depth).shape[1:])
    cache = build_cache(lambda x: run_stages(model, x, 0, depth),  # as the trainer builds it
                        lambda idx: to_tensor(crops[idx]).contiguous(memory_format=torch.channels_last),
                        len(crops), sample_shape=shape, autocast=autocast, batch_size=2)
    cached = Validate(crops, [], 0, torch.device("cpu"), autocast, cache, layout).embed(model, depth, batch=3)
    recomputed = Validate(crops, [], 0, torch.device("cpu"), autocast, None, layout).embed(model, depth, batch=3)
    assert np.array_equal(cached, recomputed)
    if precision == "fp32":  # the check can fail: a contiguous prefix gives other bits at this width
        contiguous = Validate(crops, [], 0, torch.device("cpu"), autocast, None, False).embed(model, depth, batch=3)
        assert not np.array_equal(cached, contiguous)
