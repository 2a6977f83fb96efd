"""Group margin (FR-NAS's "angular" method; dooleys/FR-NAS ``src/head/metrics_angular.py``, ``CosFace`` with a
margin ``m_maj``/``m_min`` per group): CosFace with a separate additive cosine margin per age group.

For sample ``i`` of group ``g_i`` with label ``y_i`` and cosines ``cos_ij`` between its L2-normalised embedding
and the L2-normalised class weights::

    logit_ij = s * (cos_ij - [j == y_i] * m[g_i])

then softmax cross-entropy. A larger margin for a group asks for tighter, better separated clusters of that
group (e.g. children, whose faces change fastest). Samples without a group (``g < 0``) get ``default`` margin.

Without explicit margins, :func:`resolve_margins` uses ``m[g] = m_head + step * |g - base|``: the head's margin for
the ``base`` group and larger margins toward the youngest and oldest groups. The default base group is the adult
group, the one holding age 30 (:func:`agebias.mitigation.base.adult_group`; ``20-39`` with the default bins).
With the trainer's margin heads the method is applied as per-sample margin offsets ``m[g_i] - m_head``.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from agebias.errors import SettingsError
from agebias.mitigation.base import HookSetup, MethodHooks, StepContext, adult_group
from agebias.mitigation.registry import Param, register_mitigation

log = logging.getLogger(__name__)


def resolve_margins(margins: Sequence[float], n_groups: int, head_margin: float, step: float = 0.05,
                    base: int = 0) -> list[float]:
    """The margin of every group: ``margins`` as given (one value = all groups), else the ramp of the docstring
    around group index ``base``."""
    margins = [float(m) for m in margins]
    if len(margins) == 1:
        return margins * n_groups
    if margins:
        if len(margins) != n_groups:
            raise ValueError(f"group-margin: {len(margins)} margins given for {n_groups} age groups")
        return margins
    return [head_margin + step * abs(g - base) for g in range(n_groups)]


def group_margin_logits(cos: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                        margins: torch.Tensor, scale: float = 64.0, default: float = 0.35) -> torch.Tensor:
    """``s * (cos - onehot(y) * m[g])`` for (N, C) cosines, (N,) labels and groups, (G,) margins."""
    margins = margins.to(cos)
    valid = (groups >= 0) & (groups < margins.numel())
    m = torch.full((cos.shape[0],), float(default), dtype=cos.dtype, device=cos.device)
    m[valid] = margins[groups[valid]]
    onehot = F.one_hot(labels, cos.shape[1]).to(cos)
    return scale * (cos - onehot * m[:, None])


def head_margin(head: nn.Module) -> float:
    """The head's own target margin: ``margin`` (arcface/cosface), else combined's ``m2`` (or ``m3`` if m2 = 0)."""
    if hasattr(head, "margin"):
        return float(head.margin)
    if getattr(head, "m2", 0.0):
        return float(head.m2)
    return float(getattr(head, "m3", 0.0))


@register_mitigation("group-margin", "margin per age group (FR-NAS 'angular' with --head cosface: target logit "
                     "s*(cos - m_g); with arcface cos(theta + m_g))", (
                         Param("margins", "floats", (), "margin per age group, '/'-separated (cosine units for "
                               "cosface; radians for arcface); empty = head margin + step*group"),
                         Param("step", "float", 0.05, "when margins is empty: margin grows by step per group away "
                               "from 'base'"),
                         Param("base", "int", -1, "when margins is empty: group with the head's own margin; -1 = the "
                               "adult group (the one holding age 30)"),
                     ))
class GroupMarginHooks(MethodHooks):
    """Hook point: ``margin_offsets`` = ``m[g] - m_head``."""

    def setup(self, setup: HookSetup) -> None:
        self._check_group_index(setup, "base")
        if type(setup.head).__name__ != "CosFaceHead":
            log.info("group-margin: FR-NAS's method is CosFace with a margin per age group (--head cosface); with "
                     "this head the per-group margins go to its own margin (radians for arcface)")
        base = head_margin(setup.head)
        given = int(self.params["base"])
        self.base_group = given if given >= 0 else adult_group(setup.group_names)
        try:
            self.margins = resolve_margins(self.params["margins"], setup.num_groups, base, self.params["step"],
                                           self.base_group)
        except ValueError as err:
            raise SettingsError(f"{err} ({', '.join(setup.group_names)})", field="mitigation") from None
        self.offsets = torch.tensor([m - base for m in self.margins], dtype=torch.float32)

    def margin_offsets(self, ctx: StepContext) -> torch.Tensor:
        offsets = self.offsets.to(ctx.groups.device)
        g = ctx.groups
        return torch.where(g >= 0, offsets[g.clamp(0, len(offsets) - 1)], torch.zeros_like(offsets[:1]))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "resolved_margins": getattr(self, "margins", None),
                "base_group": getattr(self, "base_group", None)}
