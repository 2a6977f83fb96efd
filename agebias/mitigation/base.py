"""The hook points of the fine-tuning loop, which every bias-mitigation method implements.

A method is a :class:`TrainingHooks` subclass (usually :class:`MethodHooks`, which keeps its parsed
``NAME[:k=v,...]`` spec); every hook of the base class is a no-op, so a subclass overrides only what it needs.
Methods are registered by name with :func:`agebias.mitigation.registry.register_mitigation`. The trainer
(:mod:`agebias.finetune`) calls the hooks; this module does not depend on it.

One training step, in order (B = per-process batch size)::

    batches = hooks.make_batches(epoch, rng, batch_size)        # once per epoch; None = shuffled default order
    labels  = hooks.transform_labels(labels, groups, generator)  # e.g. label flip; groups = age group per sample
    fmap    = trainable stages (layer4 output, B x C x 7 x 7);  emb = forward_head(fmap)
    emb     = hooks.transform_embeddings(emb, ctx)               # e.g. an adapter MLP between backbone and head
    offsets = hooks.margin_offsets(ctx)                          # (B,) added to the head's margin, or None
    logits  = head(emb, labels, offsets);  loss = (focal) cross-entropy(logits, labels)
    loss   += sum of hooks.extra_loss(ctx)                       # Tensor, {name: Tensor} or None; logged by name
    backward; optimizer step (the hooks' ``modules()`` parameters are optimised with the model's)

Conventions: age groups are int64 indices into ``HookSetup.group_names`` (from ``--age-bins``), ``-1`` for
images without an age or outside every bin. Labels are training-class indices ``0..num_classes-1``. All
randomness must come from the given ``generator`` (torch) or ``rng`` (numpy), which the trainer derives from
(seed, epoch, rank): runs are then reproducible and ``--resume`` matches an uninterrupted run. State other than
``modules()`` parameters goes through ``state_dict``/``load_state_dict`` (saved in every checkpoint).
Under DDP, ``make_batches`` returns the *global* list of batches; process r trains on batches r, r+N, ...
Extra modules are wrapped with the model in DDP (``find_unused_parameters`` is on when they exist, since e.g. a
discriminator may sit idle during a warm-up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from agebias.errors import DataError, SettingsError


@dataclass
class HookSetup:
    """What a method may need to know before training starts (given once, to :meth:`TrainingHooks.setup`)."""

    labels: np.ndarray  # int64 (N,) class index of every training image
    groups: np.ndarray  # int64 (N,) age group of every training image (-1: none)
    num_classes: int
    group_names: list[str]  # e.g. ["0-5", "5-10", ..., "50+"]
    embedding_dim: int
    feature_channels: int  # channels of the last stage's feature map (0 for a backbone without stages: timm:)
    head: nn.Module  # the margin head (agebias.models.heads.MarginHead: .scale, .margin, .num_classes)
    device: torch.device
    epochs: int
    steps_per_epoch: int
    batch_size: int
    seed: int
    world_size: int = 1
    options: dict[str, Any] = field(default_factory=dict)  # the full FinetuneConfig as a dict

    @property
    def num_groups(self) -> int:
        return len(self.group_names)


@dataclass
class StepContext:
    """Everything about the current batch (built by the trainer for each step)."""

    epoch: int  # 0-based epoch
    step: int  # 0-based global optimizer step
    labels: torch.Tensor  # int64 (B,), after transform_labels
    original_labels: torch.Tensor  # int64 (B,), before it
    groups: torch.Tensor  # int64 (B,)
    feature_maps: torch.Tensor  # layer4 output (B, C, 7, 7), part of the autograd graph
    embeddings: torch.Tensor  # (B, D) what the head sees (after transform_embeddings), not normalised
    head: nn.Module
    forward_head: Callable[[torch.Tensor], torch.Tensor]  # feature map -> embedding (bn2, fc, features)
    generator: torch.Generator
    logits: torch.Tensor | None = None  # (B, num_classes) scaled, margin applied; set before extra_loss
    loss: torch.Tensor | None = None  # the head's loss (scalar); set before extra_loss


class TrainingHooks:
    """No-op base class. Override what a method needs (see the module docstring for the call order)."""

    name = "none"

    def setup(self, setup: HookSetup) -> None:
        """Called once before training (and before a checkpoint's state is loaded on resume)."""

    def modules(self) -> nn.Module | None:
        """Extra trainable modules (discriminators, adapters); optimised, checkpointed and DDP-synced."""
        return None

    def make_batches(self, epoch: int, rng: np.random.Generator, batch_size: int) -> list[np.ndarray] | None:
        """The epoch's batches as arrays of training-image indices, or None for the default shuffled order."""
        return None

    def transform_labels(self, labels: torch.Tensor, groups: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:
        return labels

    def transform_embeddings(self, embeddings: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return embeddings

    def margin_offsets(self, ctx: StepContext) -> torch.Tensor | None:
        """Per-sample (B,) additive change of the head's margin (radians for arcface, cosine units for cosface)."""
        return None

    def extra_loss(self, ctx: StepContext) -> torch.Tensor | dict[str, torch.Tensor] | None:
        """Extra loss term(s) added to the head's loss; a dict's entries are logged by name."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """Settings written to config.json."""
        return {"name": self.name}


ADULT_AGE = 30
"""The age whose group stands for "adults" in the methods' defaults (label-flip's flipped group, group-margin's
base group): face-recognition models trained on web photos of adults serve young adults best, as FR-NAS's
gender experiments take "male", the group those models serve best, as the group to flip."""


def adult_group(group_names: list[str]) -> int:
    """Index of the age group that holds :data:`ADULT_AGE` (labels like ``20-39`` or ``70+``); when none does, the
    group nearest to it; when no label reads as an age range, the middle group."""
    spans = []
    for i, name in enumerate(group_names):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)|\+)\s*", str(name))
        if m:
            lo = int(m.group(1))
            spans.append((i, lo, int(m.group(2)) if m.group(2) else 10**6))
    if not spans:
        return (len(group_names) - 1) // 2
    return min(spans, key=lambda s: (0 if s[1] <= ADULT_AGE <= s[2] else min(abs(ADULT_AGE - s[1]),
                                                                             abs(ADULT_AGE - s[2])), s[0]))[0]


@dataclass(frozen=True)
class MitigationSpec:
    """A parsed ``NAME[:key=value,...]``: the method name and every parameter (defaults filled in)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        def fmt(v: Any) -> str:
            return "/".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v).lower() \
                if isinstance(v, bool) else str(v)
        return self.name + (":" + ",".join(f"{k}={fmt(v)}" for k, v in self.params.items()) if self.params else "")


class MethodHooks(TrainingHooks):
    """A registered method built from its parsed spec: ``name`` and ``params`` (typed, defaults filled in)."""

    def __init__(self, spec: MitigationSpec):
        self.spec = spec
        self.name = spec.name
        self.params = dict(spec.params)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "spec": str(self.spec), **{k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in self.params.items()}}

    def _check_group_index(self, setup: HookSetup, key: str) -> None:
        """A parameter naming one age group (``-1`` = automatic) must be an index of ``setup.group_names``."""
        value = int(self.params[key])
        if not -1 <= value < setup.num_groups:
            groups = ", ".join(f"{i}={n}" for i, n in enumerate(setup.group_names))
            raise SettingsError(f"{self.name}: {key}={value} is not an age group index ({groups}; -1 = automatic)",
                                field="mitigation")

    def _need_groups(self, setup: HookSetup, minimum: int = 2) -> None:
        present = np.unique(setup.groups[setup.groups >= 0])
        if present.size < minimum:
            raise DataError(f"mitigation '{self.name}' needs training images in at least {minimum} age groups; "
                            f"found {present.size} (check --age-bins and the ages in the data)")
