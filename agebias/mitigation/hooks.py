"""The mitigation methods as :class:`agebias.finetune.hooks.TrainingHooks` (registered by name on import).

``agebias.finetune.hooks.create_hooks("NAME[:k=v,...]")`` imports this module, whose ``@register_hooks``
factories parse the spec with :func:`agebias.mitigation.registry.parse_mitigation` (typed parameters, clear
errors) and build one of the classes below. Which hook point each method uses:

- ``label-flip``:   ``transform_labels``                       (:mod:`agebias.mitigation.label_flip`)
- ``group-margin``: ``margin_offsets`` = ``m[g] - m_head``       (:mod:`agebias.mitigation.group_margin`)
- ``adversarial``:  ``modules``, ``transform_embeddings``, ``extra_loss``  (:mod:`agebias.mitigation.adversarial`)
- ``mixfair``:      ``margin_offsets`` = shift                 (:mod:`agebias.mitigation.mixfair`)
- ``ddl``:          ``make_batches`` (one sub-batch per age group), ``extra_loss``  (:mod:`agebias.mitigation.ddl`)
"""

from __future__ import annotations

import logging
import contextlib
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from agebias.errors import UserError
from agebias.finetune.hooks import HookSetup, StepContext, TrainingHooks, register_hooks
from agebias.mitigation.adversarial import AgeAdversary
from agebias.mitigation.ddl import GroupBranchSampler, ddl_loss
from agebias.mitigation.group_margin import resolve_margins
from agebias.mitigation.label_flip import flip_labels, group_identity_table
from agebias.mitigation.mixfair import mix_feature_maps, mixfair_shift, random_partner
from agebias.mitigation.registry import MitigationSpec, parse_mitigation

log = logging.getLogger(__name__)


def head_margin(head: nn.Module) -> float:
    """The head's own target margin: ``margin`` (arcface/cosface), else combined's ``m2`` (or ``m3`` if m2 = 0)."""
    if hasattr(head, "margin"):
        return float(head.margin)
    if getattr(head, "m2", 0.0):
        return float(head.m2)
    return float(getattr(head, "m3", 0.0))


class _SpecHooks(TrainingHooks):
    def __init__(self, spec: MitigationSpec):
        self.spec = spec
        self.params = dict(spec.params)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "spec": str(self.spec), **{k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in self.params.items()}}

    def _check_group_index(self, setup: HookSetup, key: str) -> None:
        """A parameter naming one age group (``-1`` = automatic) must be an index of ``setup.group_names``."""
        value = int(self.params[key])
        if not -1 <= value < setup.num_groups:
            groups = ", ".join(f"{i}={n}" for i, n in enumerate(setup.group_names))
            raise UserError(f"mitigation '{self.name}': {key}={value} is not an age group index ({groups}; "
                            f"-1 = automatic)")

    @staticmethod
    def _need_groups(setup: HookSetup, what: str, minimum: int = 2) -> None:
        present = np.unique(setup.groups[setup.groups >= 0])
        if present.size < minimum:
            raise UserError(f"mitigation '{what}' needs training images in at least {minimum} age groups; found "
                            f"{present.size} (check --age-bins and the ages in the data)")


class LabelFlipHooks(_SpecHooks):
    name = "label-flip"

    def setup(self, setup: HookSetup) -> None:
        self._check_group_index(setup, "group")
        self._need_groups(setup, self.name, 1)
        self.candidates = group_identity_table(setup.labels, setup.groups, setup.num_groups)
        self.flipped = 0

    def transform_labels(self, labels, groups, generator):
        cands = [c.to(labels.device) for c in self.candidates]
        new, _ = flip_labels(labels, groups, cands, self.params["p"], self.params["group"], generator)
        self.flipped += int((new != labels).sum())
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"flipped": self.flipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flipped = int(state.get("flipped", 0))


class GroupMarginHooks(_SpecHooks):
    name = "group-margin"

    def setup(self, setup: HookSetup) -> None:
        self._check_group_index(setup, "base")
        if type(setup.head).__name__ != "CosFaceHead":
            log.info("group-margin: FR-NAS's method is CosFace with a margin per age group (--head cosface); with this "
                 "head the per-group margins go to its own margin (radians for arcface)")
        base = head_margin(setup.head)
        try:
            self.margins = resolve_margins(self.params["margins"], setup.num_groups, base, self.params["step"],
                                           self.params["base"])
        except ValueError as err:
            raise UserError(f"{err} ({', '.join(setup.group_names)})") from None
        self.offsets = torch.tensor([m - base for m in self.margins], dtype=torch.float32)

    def margin_offsets(self, ctx: StepContext) -> torch.Tensor:
        offsets = self.offsets.to(ctx.groups.device)
        g = ctx.groups
        return torch.where(g >= 0, offsets[g.clamp(0, len(offsets) - 1)], torch.zeros_like(offsets[:1]))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "resolved_margins": getattr(self, "margins", None)}


class AdversarialHooks(_SpecHooks):
    name = "adversarial"

    def setup(self, setup: HookSetup) -> None:
        self._need_groups(setup, self.name)
        p = self.params
        self.adversary = AgeAdversary(setup.embedding_dim, setup.num_groups, weight=p["weight"], warmup=p["warmup"],
                                      hidden=p["hidden"], mlp=p["mlp"], disc_weight=p["disc_weight"]).to(setup.device)

    def modules(self) -> nn.Module:
        return self.adversary

    def transform_embeddings(self, embeddings, ctx):
        return self.adversary.transform(embeddings)

    def extra_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return self.adversary.losses(ctx.embeddings, ctx.groups, ctx.step)


class MixFairHooks(_SpecHooks):
    name = "mixfair"

    def setup(self, setup: HookSetup) -> None:
        if setup.feature_channels <= 0:  # the trainer gives the layer4 channels of iresnets only
            raise UserError("mitigation 'mixfair' mixes final feature maps: it needs an iresnet backbone")
        if getattr(setup.head, "margin", None) is None or type(setup.head).__name__ != "CosFaceHead":
            log.info("mixfair: the MixFair shift is a cosine-margin shift; with a non-cosface head it is added to that "
                 "head's margin as is")
        self._bn_cache: list[nn.Module] | None = None

    def margin_offsets(self, ctx: StepContext) -> torch.Tensor:
        if ctx.feature_maps is None or ctx.forward_head is None:
            raise UserError("mitigation 'mixfair' mixes final feature maps: it needs an iresnet backbone")
        perm = random_partner(ctx.feature_maps.shape[0], ctx.generator).to(ctx.feature_maps.device)
        detach = self.params["detach"]
        with (torch.no_grad() if detach else contextlib.nullcontext()), self._frozen_bn_stats(ctx):
            f_mix = ctx.forward_head(mix_feature_maps(ctx.feature_maps, perm))
        f_a = ctx.embeddings.detach() if detach else ctx.embeddings
        shift = mixfair_shift(f_a, f_a[perm], f_mix.float())
        return shift.detach() if detach else shift

    @contextlib.contextmanager
    def _frozen_bn_stats(self, ctx: StepContext) -> Iterator[None]:
        """The extra forward of the mixed maps must not move BatchNorm running statistics (they describe real
        faces) nor touch them in place (the main forward saved them for backward): while it runs, the model's
        BatchNorms stop tracking (batch statistics only). Applies when ``forward_head`` is a bound method."""
        owner = getattr(ctx.forward_head, "__self__", None)
        if not isinstance(owner, nn.Module):
            yield
            return
        if self._bn_cache is None:
            self._bn_cache = [m for m in owner.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                              and m.track_running_stats]
        switched = [m for m in self._bn_cache if m.training]
        for m in switched:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in switched:
                m.track_running_stats = True


class DDLHooks(_SpecHooks):
    name = "ddl"

    def setup(self, setup: HookSetup) -> None:
        self._check_group_index(setup, "teacher")
        self._need_groups(setup, self.name)
        try:
            # one list entry per process batch: under DDP process r takes entries r, r + N, ...
            self.sampler = GroupBranchSampler(setup.labels, setup.groups, setup.batch_size,
                                              per_identity=self.params["per_identity"], seed=setup.seed,
                                              n_batches=max(1, setup.steps_per_epoch * setup.world_size))
        except ValueError as err:
            raise UserError(f"mitigation 'ddl': {err}") from None
        if len(self.sampler.pools) < 2:
            raise UserError("mitigation 'ddl' needs identities with >= "
                            f"{self.params['per_identity']} images in at least 2 age groups")
        teacher = int(self.params["teacher"])
        if teacher >= 0 and teacher not in self.sampler.pools:
            raise UserError(f"mitigation 'ddl': teacher group {teacher} ({setup.group_names[teacher]}) has no identity "
                            f"with >= {self.params['per_identity']} images, so it has no branch; choose another "
                            f"teacher or -1")
        if self.sampler.skipped_groups:
            names = ", ".join(setup.group_names[g] for g in self.sampler.skipped_groups)
            log.info(f"ddl: age groups without an identity of >= {self.params['per_identity']} images are left out "
                 f"of the branches: {names}")

    def make_batches(self, epoch: int, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        return [np.asarray(b, dtype=np.int64) for b in self.sampler.epoch_batches(rng)]

    def extra_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        p = self.params
        out = ddl_loss(ctx.embeddings.float(), ctx.labels, ctx.groups, bins=p["bins"], sigma=p["sigma"] or None,
                       topk=p["topk"], teacher=p["teacher"], weight=p["weight"], order_weight=p["order"],
                       entropy_weight=p["entropy"])
        return {"ddl": out["ddl"]}


_CLASSES = {c.name: c for c in (LabelFlipHooks, GroupMarginHooks, AdversarialHooks, MixFairHooks, DDLHooks)}


def create_mitigation_hooks(spec: str | MitigationSpec) -> TrainingHooks:
    parsed = parse_mitigation(spec)
    if parsed.name == "none":
        return TrainingHooks()
    return _CLASSES[parsed.name](parsed)


for _name in _CLASSES:
    register_hooks(_name)(create_mitigation_hooks)
