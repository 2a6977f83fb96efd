"""Freezing parts of an IResNet, done right.

Parts, in network order: ``stem`` (conv1, bn1, prelu), ``layer1`` .. ``layer4``; numbers 1-4 name the layers.
Freezing ``layer1`` also freezes the stem (as the MSc_FR_Bias pipeline did; there is no sense in training the
stem under a frozen layer1). A frozen part has ``requires_grad=False`` on every parameter **and** its BatchNorms in
eval mode, re-applied after every ``model.train()`` through :func:`set_train_mode`, so its weights *and* running
statistics stay bit-identical. ``features.weight`` (the embedding BatchNorm1d's scale) is fixed at 1 as in
arcface_torch, whatever is frozen.

When the frozen parts form a prefix of the network (e.g. stem + layer1..3), :func:`prefix_depth` says how many
stages it covers; the trainer then runs that prefix under ``torch.no_grad()`` (and usually caches its output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from agebias.errors import UserError

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def parse_frozen_layers(spec: str | Iterable[str | int] | None) -> tuple[str, ...]:
    """``"1,2,3"`` -> ``("stem", "layer1", "layer2", "layer3")``; ``""``/``"none"``/None -> ``()``.

    Accepts numbers 1-4, ``layerN`` and ``stem``; the result is in network order without duplicates.
    """
    if spec is None:
        return ()
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s and s.lower() != "none"]
    parts: set[str] = set()
    for item in items:
        name = item.lower()
        if name.isdigit():
            name = f"layer{name}"
        if name not in STAGES:
            raise UserError(f"bad --frozen-layers entry '{item}': use numbers 1-4 (layer1..layer4) and/or 'stem'")
        parts.add(name)
        if name == "layer1":
            parts.add("stem")
    return tuple(s for s in STAGES if s in parts)


@dataclass(frozen=True)
class FreezeSummary:
    parts: tuple[str, ...]
    prefix_depth: int  # how many leading stages are frozen (0..5)
    trainable_params: int
    frozen_params: int


def _check_iresnet(model: nn.Module) -> None:
    missing = [n for n in (*STAGES[1:], "conv1", "bn1", "prelu", "features") if not hasattr(model, n)]
    if missing:
        raise UserError(f"freezing layers needs an iresnet backbone; this model lacks {', '.join(missing)} "
                        f"(pass --frozen-layers none to train it whole)")


def part_modules(model: nn.Module, part: str) -> list[nn.Module]:
    if part == "stem":
        return [model.conv1, model.bn1, model.prelu]
    return [getattr(model, part)]


def prefix_depth(parts: Iterable[str]) -> int:
    """Number of leading stages (stem, layer1, ...) that are all frozen."""
    parts = set(parts)
    depth = 0
    for stage in STAGES:
        if stage not in parts:
            break
        depth += 1
    return depth


def freeze(model: nn.Module, parts: Iterable[str]) -> FreezeSummary:
    """Set ``requires_grad=False`` on the frozen parts (and on ``features.weight``); returns a summary."""
    parts = tuple(parts)
    if parts:
        _check_iresnet(model)
    for part in parts:
        for module in part_modules(model, part):
            for p in module.parameters():
                p.requires_grad_(False)
    features = getattr(model, "features", None)
    if isinstance(features, nn.BatchNorm1d) and features.weight is not None:
        features.weight.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return FreezeSummary(parts, prefix_depth(parts), trainable, frozen)


def set_train_mode(model: nn.Module, parts: Iterable[str], training: bool = True) -> nn.Module:
    """``model.train(training)``, then put every frozen part back in eval mode (BatchNorm statistics fixed)."""
    model.train(training)
    for part in parts:
        for module in part_modules(model, part):
            module.eval()
    return model


def stage_fns(model: nn.Module) -> list:
    return [model.forward_stem, model.layer1, model.layer2, model.layer3, model.layer4]


def run_stages(model: nn.Module, x: torch.Tensor, start: int, stop: int = len(STAGES)) -> torch.Tensor:
    """Run stages ``start..stop-1`` (0 = stem, 4 = layer4) of an iresnet on ``x``."""
    for fn in stage_fns(model)[start:stop]:
        x = fn(x)
    return x
