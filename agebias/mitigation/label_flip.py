"""Label flip (FR-NAS): identity-label noise inside one age group per batch.

Definition used here (REFERENCE.md section 7, made precise). For each training batch:

1. choose one group ``g``: uniformly at random among the groups present in the batch (``group=-1``, default),
   or the fixed group index ``group=K`` (e.g. the group the model serves worst);
2. among the ``n_g`` samples of group ``g`` in the batch, choose ``k = round(p * n_g)`` at random, without
   replacement (``p = 0.3`` by default);
3. replace each chosen sample's label ``y`` by an identity drawn uniformly from ``C_g \\ {y}``, where ``C_g`` is the
   set of training identities with at least one training image in group ``g`` (an identity of the same group).
   If ``C_g \\ {y}`` is empty the label is kept.

Only the labels change; images, groups and the loss are untouched. The randomness comes from the given
``torch.Generator`` so runs are reproducible from the seed.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from agebias.mitigation.base import HookSetup, MethodHooks
from agebias.mitigation.registry import Param, register_mitigation


def group_identity_table(labels: Sequence[int] | torch.Tensor, groups: Sequence[int] | torch.Tensor,
                         n_groups: int) -> list[torch.Tensor]:
    """``C_g`` for every group: sorted int64 tensors of the identity labels that have an image in group ``g``.

    ``labels`` and ``groups`` are per training image (same length); negative groups (no age) are ignored.
    """
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    groups_t = torch.as_tensor(groups, dtype=torch.long)
    return [torch.unique(labels_t[groups_t == g]) for g in range(n_groups)]


def flip_labels(labels: torch.Tensor, groups: torch.Tensor, candidates: Sequence[torch.Tensor], p: float = 0.3,
                group: int = -1, generator: torch.Generator | None = None) -> tuple[torch.Tensor, int | None]:
    """Return ``(new_labels, g)``: a copy of ``labels`` with ``round(p * n_g)`` labels of group ``g`` flipped.

    ``labels``/``groups``: int64 (N,) for the batch; ``candidates``: ``C_g`` per group (see
    :func:`group_identity_table`). ``g`` is ``None`` when no group was eligible (empty batch or the fixed group is
    absent from the batch); the labels are then returned unchanged.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label-flip p must be in [0, 1], got {p}")
    new = labels.clone()
    present = torch.unique(groups[(groups >= 0) & (groups < len(candidates))])
    if group >= 0:
        if not bool((present == group).any()):
            return new, None
        g = int(group)
    else:
        if present.numel() == 0:
            return new, None
        g = int(present[torch.randint(present.numel(), (1,), generator=generator)].item())
    members = torch.nonzero(groups == g, as_tuple=False).flatten()
    k = int(round(p * members.numel()))
    if k == 0:
        return new, g
    chosen = members[torch.randperm(members.numel(), generator=generator)[:k]]
    pool = candidates[g].to(labels.device)
    for i in chosen.tolist():
        others = pool[pool != labels[i]]
        if others.numel() > 0:
            new[i] = others[torch.randint(others.numel(), (1,), generator=generator).item()]
    return new, g


@register_mitigation("label-flip", "FR-NAS label flip: per batch, relabel a fraction p of one age group's samples as "
                     "another identity of that group", (
                         Param("p", "float", 0.3, "fraction of the chosen group's samples relabelled per batch",
                               low=0.0, high=1.0),
                         Param("group", "int", -1, "age group index to flip; -1 = a random group present in each "
                               "batch"),
                     ))
class LabelFlipHooks(MethodHooks):
    """Hook point: ``transform_labels``."""

    def setup(self, setup: HookSetup) -> None:
        self._check_group_index(setup, "group")
        self._need_groups(setup, 1)
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
