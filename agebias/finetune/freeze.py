"""Freezing stages of a backbone, done right.

A backbone's *stages* are named parts in network order that, run in turn and followed by its ``forward_head``, make
its forward pass (:func:`backbone_stages`):

- an iresnet: ``stem`` (conv1, bn1, prelu), ``layer1`` .. ``layer4``;
- a module with a ``stages()`` method returning ``[(name, module), ...]``, e.g. SFace's network
  (:class:`~agebias.models.sface_net.SFaceNet`): ``stem`` (112x112), ``layer1`` .. ``layer4`` (56, 28, 14, 7 pixels);
- any other module (e.g. a ``timm:`` backbone) has no stages and trains whole.

``--frozen-layers`` names stages by name or by number: N is the N-th stage after the stem (1-4 = layer1..layer4 for
iresnet and SFace). Freezing stage 1 also freezes the stem (as the MSc_FR_Bias pipeline did; there is no sense in
training the stem under a frozen layer1). A frozen stage has ``requires_grad=False`` on every parameter **and** its
BatchNorms in eval mode, re-applied after every ``model.train()`` through :func:`set_train_mode`, so its weights
*and* running statistics stay bit-identical. ``features.weight`` (the embedding BatchNorm1d's scale) is fixed as in
arcface_torch, whatever is frozen.

When the frozen stages form a prefix of the network (e.g. stem + layer1..3), :func:`prefix_depth` says how many
stages it covers; the trainer then runs that prefix under ``torch.no_grad()`` (and usually caches its output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from agebias.errors import UserError

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")  # the stages of an iresnet and of SFaceNet


@dataclass(frozen=True)
class Stage:
    """One stage: its ``name``, the ``modules`` that freezing it fixes, and ``run`` (input -> output)."""

    name: str
    modules: tuple[nn.Module, ...]
    run: Callable[[torch.Tensor], torch.Tensor]


def _is_iresnet(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("forward_stem", "forward_head", "conv1", "bn1", "prelu", *STAGES[1:]))


def backbone_stages(model: nn.Module) -> list[Stage]:
    """The stages of ``model`` in network order (see the module notes); ``[]`` when it has none."""
    if callable(getattr(model, "stages", None)) and callable(getattr(model, "forward_head", None)):
        return [Stage(name, (module,), module) for name, module in model.stages()]
    if _is_iresnet(model):
        return [Stage("stem", (model.conv1, model.bn1, model.prelu), model.forward_stem),
                *[Stage(name, (getattr(model, name),), getattr(model, name)) for name in STAGES[1:]]]
    return []


def stage_names(model: nn.Module) -> tuple[str, ...]:
    return tuple(s.name for s in backbone_stages(model))


def has_stages(model: nn.Module) -> bool:
    """Whether ``model`` has stages (so that a frozen prefix can run, and be cached, on its own)."""
    return bool(backbone_stages(model))


def describe_stages(names: Sequence[str]) -> str:
    """``"stem, layer1, layer2, layer3, layer4 (numbers 1-4 = layer1..layer4)"`` for error messages."""
    numbered = [n for n in names if n != "stem"]
    if not numbered:
        return ", ".join(names)
    span = f"1-{len(numbered)}" if len(numbered) > 1 else "1"
    return f"{', '.join(names)} (numbers {span} = {numbered[0]}..{numbered[-1]})"


def parse_frozen_layers(spec: str | Iterable[str | int] | None, names: Sequence[str] = STAGES) -> tuple[str, ...]:
    """The stages ``spec`` names among the backbone's stage ``names`` (default: an iresnet's), in network order.

    ``"1,2,3"`` -> ``("stem", "layer1", "layer2", "layer3")``; ``""``/``"none"``/None -> ``()``. Entries are stage
    names or numbers N = the N-th stage after the stem; freezing stage 1 adds the stem."""
    if spec is None:
        return ()
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s and s.lower() != "none"]
    numbered = [n for n in names if n != "stem"]
    parts: set[str] = set()
    for item in items:
        name = item.lower()
        if name.isdigit() and 1 <= int(name) <= len(numbered):
            name = numbered[int(name) - 1]
        if name not in names:
            raise UserError(f"bad --frozen-layers entry '{item}': this backbone's stages are "
                            f"{describe_stages(names) or 'none (it trains whole: use --frozen-layers none)'}")
        parts.add(name)
        if numbered and name == numbered[0] and "stem" in names:
            parts.add("stem")
    return tuple(s for s in names if s in parts)


def check_frozen_layers(spec: str | None) -> None:
    """The check before any backbone is built: every backbone the toolkit builds (iresnet, SFace) names its stages
    :data:`STAGES`, so ``spec`` must name some of those (checked again against the backbone's own stages when it is
    built)."""
    parse_frozen_layers(spec, STAGES)


@dataclass(frozen=True)
class FreezeSummary:
    parts: tuple[str, ...]
    prefix_depth: int  # how many leading stages are frozen
    trainable_params: int
    frozen_params: int


def prefix_depth(parts: Iterable[str], names: Sequence[str] = STAGES) -> int:
    """Number of leading stages (of ``names``, network order) that are all frozen."""
    parts = set(parts)
    depth = 0
    for stage in names:
        if stage not in parts:
            break
        depth += 1
    return depth


def _stage_map(model: nn.Module, parts: Iterable[str]) -> dict[str, Stage]:
    stages = {s.name: s for s in backbone_stages(model)}
    missing = [p for p in parts if p not in stages]
    if missing and not stages:
        raise UserError(f"freezing layers needs a backbone with stages (an iresnet, sface, or a module with a "
                        f"stages() method); this {type(model).__name__} has none: pass --frozen-layers none to "
                        "train it whole")
    if missing:
        raise UserError(f"this backbone has no stage {missing[0]}; its stages are {describe_stages(list(stages))}")
    return stages


def freeze(model: nn.Module, parts: Iterable[str]) -> FreezeSummary:
    """Set ``requires_grad=False`` on the frozen stages (and on ``features.weight``); returns a summary."""
    parts = tuple(parts)
    stages = _stage_map(model, parts)
    for part in parts:
        for module in stages[part].modules:
            for p in module.parameters():
                p.requires_grad_(False)
    features = getattr(model, "features", None)
    if isinstance(features, nn.BatchNorm1d) and features.weight is not None:
        features.weight.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return FreezeSummary(parts, prefix_depth(parts, list(stages)), trainable, frozen)


def set_train_mode(model: nn.Module, parts: Iterable[str], training: bool = True) -> nn.Module:
    """``model.train(training)``, then put every frozen stage back in eval mode (BatchNorm statistics fixed)."""
    parts = tuple(parts)
    stages = _stage_map(model, parts)
    model.train(training)
    for part in parts:
        for module in stages[part].modules:
            module.eval()
    return model


def run_stages(model: nn.Module, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """Run stages ``start..stop-1`` of ``model`` on ``x`` (0 = the first stage; ``stop`` None = to the last)."""
    for stage in backbone_stages(model)[start:stop]:
        x = stage.run(x)
    return x
