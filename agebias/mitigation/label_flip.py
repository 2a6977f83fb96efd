"""Label flip (FR-NAS): identity-label noise inside one fixed age group in every batch.

FR-NAS's baseline (dooleys/FR-NAS ``src/baselines/smac_dpn_trainer_flip_*.py``, function ``flip``) relabels, in
every training batch, ``n = int(0.3 * n_g)`` of the samples of one fixed group (its "male" images: the group the
models serve best) with a random identity of that group. agebias does the same with age groups. For each batch:

1. the group ``g`` is fixed for the whole run: ``group=K``, or by default (``group=-1``) the adult group, the age
   group holding age 30 (:func:`agebias.mitigation.base.adult_group`): face-recognition models trained on web
   photos of adults serve young adults best, the age analogue of FR-NAS's choice;
2. among the ``n_g`` samples of group ``g`` in the batch, ``k = int(p * n_g)`` (truncated, as FR-NAS's
   ``int(fraction * len(ids))``) are chosen at random without replacement (``p = 0.3`` by default);
3. each chosen sample's label ``y`` becomes an identity drawn uniformly from ``C_g \\ {y}``, where ``C_g`` is the set
   of training identities with at least one training image in group ``g`` (FR-NAS draws from the group's
   identities until it differs from ``y``: the same distribution). If ``C_g \\ {y}`` is empty the label is kept
   (FR-NAS would loop for ever).

A batch without a sample of group ``g`` is left unchanged. Only the labels change; images, groups and the loss
are untouched. The randomness comes from the given ``torch.Generator`` so runs are reproducible from the seed.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from agebias.mitigation.base import HookSetup, MethodHooks, adult_group
from agebias.mitigation.registry import Param, register_mitigation

log = logging.getLogger(__name__)


def group_identity_table(labels: Sequence[int] | torch.Tensor, groups: Sequence[int] | torch.Tensor,
                         n_groups: int) -> list[torch.Tensor]:
    """``C_g`` for every group: sorted int64 tensors of the identity labels that have an image in group ``g``.

    ``labels`` and ``groups`` are per training image (same length); negative groups (no age) are ignored.
    """
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    groups_t = torch.as_tensor(groups, dtype=torch.long)
    return [torch.unique(labels_t[groups_t == g]) for g in range(n_groups)]


def flip_count(p: float, n: int) -> int:
    """How many of a batch's ``n`` samples of the flipped group are relabelled: ``int(p * n)`` (FR-NAS)."""
    return int(p * n)


def flip_labels(labels: torch.Tensor, groups: torch.Tensor, candidates: Sequence[torch.Tensor], p: float,
                group: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of ``labels`` with ``int(p * n_g)`` labels of group ``group`` flipped (see the module notes).

    ``labels``/``groups``: int64 (N,) for the batch; ``candidates``: ``C_g`` per group (see
    :func:`group_identity_table`); ``group``: the fixed group index (>= 0).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label-flip p must be in [0, 1], got {p}")
    if not 0 <= group < len(candidates):
        raise ValueError(f"label-flip group {group} is not one of the {len(candidates)} groups")
    new = labels.clone()
    members = torch.nonzero(groups == group, as_tuple=False).flatten()
    k = flip_count(p, members.numel())
    if k == 0:
        return new
    chosen = members[torch.randperm(members.numel(), generator=generator)[:k]]
    pool = candidates[group].to(labels.device)
    for i in chosen.tolist():
        others = pool[pool != labels[i]]
        if others.numel() > 0:
            new[i] = others[torch.randint(others.numel(), (1,), generator=generator).item()]
    return new


@register_mitigation("label-flip", "FR-NAS label flip: per batch, relabel int(p * n) of one fixed age group's n "
                     "samples as other identities of that group", (
                         Param("p", "float", 0.3, "fraction of the group's samples relabelled per batch (truncated)",
                               low=0.0, high=1.0),
                         Param("group", "int", -1, "age group index to flip in every batch; -1 = the adult group "
                               "(the one holding age 30, the age models serve best)"),
                     ))
class LabelFlipHooks(MethodHooks):
    """Hook point: ``transform_labels``."""

    def setup(self, setup: HookSetup) -> None:
        self._check_group_index(setup, "group")
        self._need_groups(setup, 1)
        self.candidates = group_identity_table(setup.labels, setup.groups, setup.num_groups)
        given = int(self.params["group"])
        self.group = given if given >= 0 else adult_group(setup.group_names)
        if given < 0:
            log.info(f"label-flip: flipping age group {setup.group_names[self.group]} (the adult group) in every "
                     f"batch")
        self.flipped = 0

    def transform_labels(self, labels, groups, generator):
        cands = [c.to(labels.device) for c in self.candidates]
        new = flip_labels(labels, groups, cands, self.params["p"], self.group, generator)
        self.flipped += int((new != labels).sum())
        return new

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "flipped_group": getattr(self, "group", None)}

    def state_dict(self) -> dict[str, Any]:
        return {"flipped": self.flipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.flipped = int(state.get("flipped", 0))
