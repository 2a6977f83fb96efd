"""MixFair adapter (MixFairFace, AAAI-23): a per-sample margin from feature-map mixing.

With ``F_i`` the final feature map of sample ``i`` (layer4 output), ``pi`` a random permutation of the batch and
``h`` the backbone's head (feature map -> embedding), L2-normalised embeddings::

    f_a = h(F_i),  f_b = h(F_pi(i)),  f_mix = h(0.5 F_i + 0.5 F_pi(i))
    shift_i = (f_mix . f_b)^2 - (f_mix . f_a)^2
    logit_ij = s * (cos_ij - [j == y_i] * (m + shift_i))

A sample whose identity dominates the mix (``f_mix`` closer to itself) gets a smaller margin; one whose features
are dominated by its partner gets a larger one, which evens out the per-identity difficulty. ``shift`` is
treated as a margin (no gradient through it) unless ``detach=False``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def mix_feature_maps(fmap: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``0.5 * F + 0.5 * F[perm]`` for (N, C, H, W) feature maps."""
    return 0.5 * fmap + 0.5 * fmap[perm]


def mixfair_shift(f_a: torch.Tensor, f_b: torch.Tensor, f_mix: torch.Tensor) -> torch.Tensor:
    """``(f_mix . f_b)^2 - (f_mix . f_a)^2`` per row; inputs are L2-normalised here."""
    f_a, f_b, f_mix = F.normalize(f_a), F.normalize(f_b), F.normalize(f_mix)
    return (f_mix * f_b).sum(1) ** 2 - (f_mix * f_a).sum(1) ** 2


def mixfair_logits(cos: torch.Tensor, labels: torch.Tensor, shift: torch.Tensor, margin: float = 0.35,
                   scale: float = 64.0) -> torch.Tensor:
    """``s * (cos - onehot(y) * (m + shift))`` for (N, C) cosines."""
    onehot = F.one_hot(labels, cos.shape[1]).to(cos)
    return scale * (cos - onehot * (margin + shift)[:, None])


def random_partner(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A permutation of ``range(n)`` without fixed points when ``n > 1`` (a random cyclic shift of a shuffle)."""
    if n < 2:
        return torch.arange(n)
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)
    return perm
