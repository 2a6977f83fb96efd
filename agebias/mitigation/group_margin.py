"""Group margin (FR-NAS's "angular" method): CosFace with a separate additive cosine margin per age group.

For sample ``i`` of group ``g_i`` with label ``y_i`` and cosines ``cos_ij`` between its L2-normalised embedding
and the L2-normalised class weights::

    logit_ij = s * (cos_ij - [j == y_i] * m[g_i])

then softmax cross-entropy. A larger margin for a group asks for tighter, better separated clusters of that
group (e.g. children, whose faces change fastest). Samples without a group (``g < 0``) get ``default`` margin.

Without explicit margins, :func:`resolve_margins` uses ``m[g] = m_head + step * |g - base|``: the head's margin for
the ``base`` group (default the middle one, adults) and larger margins toward the youngest and oldest groups.
With the trainer's margin heads the method is applied as per-sample margin offsets ``m[g_i] - m_head``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def resolve_margins(margins: Sequence[float], n_groups: int, head_margin: float, step: float = 0.05,
                    base: int = -1) -> list[float]:
    """The margin of every group: ``margins`` as given (one value = all groups), else the ramp of the docstring."""
    margins = [float(m) for m in margins]
    if len(margins) == 1:
        return margins * n_groups
    if margins:
        if len(margins) != n_groups:
            raise ValueError(f"group-margin: {len(margins)} margins given for {n_groups} age groups")
        return margins
    base = (n_groups - 1) // 2 if base < 0 else base
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


class GroupMarginHead(nn.Module):
    """A CosFace classifier (its own ``weight``: (C, D)) whose margin depends on the sample's group."""

    def __init__(self, embedding_size: int, num_classes: int, margins: Sequence[float], scale: float = 64.0,
                 default: float = 0.35):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size).normal_(0, 0.01))
        self.register_buffer("margins", torch.tensor([float(m) for m in margins]))
        self.scale = float(scale)
        self.default = float(default)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1, 1)
        return group_margin_logits(cos, labels, groups, self.margins, self.scale, self.default)
