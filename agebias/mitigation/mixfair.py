"""MixFair adapter (MixFairFace, AAAI-23): a per-sample margin from feature-map mixing, plus the released head's CIFP
term.

With ``F_i`` the final feature map of sample ``i`` (layer4 output), ``pi`` a random permutation of the batch and
``h`` the backbone's head (feature map -> embedding), L2-normalised embeddings, as the released training step
(fuenwang/MixFairFace ``main.py``, ``MM.training_step``) computes them::

    f_a = h(F_i),  f_b = h(F_pi(i)),  f_mix = h(0.5 F_i + 0.5 F_pi(i))
    shift_i = (f_mix . f_b)^2 - (f_mix . f_a)^2
    logit_ij = s * (cos_ij - [j == y_i] * (m + shift_i + cifp_i))

A sample whose identity dominates the mix (``f_mix`` closer to itself) gets a smaller margin; one whose features
are dominated by its partner gets a larger one, which evens out the per-identity difficulty.

``cifp_i`` is the second margin term of the released head (``network.py``, ``MyProduct.cifp_margin``; after the
CIFP loss, "consistent instance false positive rate"): over the whole batch, the ``ceil(N_neg / (C - 1))``
largest non-target cosines (``N_neg`` = B (C - 1), so B of them) are the hard negatives; sample i's hard negatives
that stay below its target cosine minus ``m`` add their mean squared cosine, ``cifp_i = mean(cos_ij^2)`` (0 when it
has none). ``cifp=false`` leaves it out (the released code notes it raises TPR without changing the spread).

As released, gradients flow through both terms (``detach=false``, the default); ``detach=true`` treats them as
constant margins. Differences from the released code, by choice: the partner permutation has no fixed points (a
sample is never mixed with itself; ``torch.randperm`` may do that), and the extra forward of the mixed maps does
not update BatchNorm running statistics (they keep describing real faces).
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from agebias.errors import SettingsError
from agebias.mitigation.base import HookSetup, MethodHooks, StepContext
from agebias.mitigation.group_margin import head_margin
from agebias.mitigation.registry import Param, register_mitigation

log = logging.getLogger(__name__)
_NEEDS_STAGES = ("mixfair mixes final feature maps: it needs an iresnet or sface backbone (timm: backbones have no "
                 "stages)")


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


def cifp_margin(cos: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The released MixFair head's CIFP margin per sample (see the module notes) from (B, C) cosines."""
    b, c = cos.shape
    target = F.one_hot(labels, c).bool()
    pos = cos[target].view(b, 1)
    neg = cos[~target].view(b, c - 1)
    flat = neg.flatten()
    k = min(flat.numel(), math.ceil((1 / (c - 1)) * flat.numel()))
    hard = torch.zeros_like(flat)
    hard[torch.topk(flat.detach(), k).indices] = 1.0
    hard = hard.view(b, c - 1) * ((pos - margin) > neg).to(cos.dtype)
    return (neg ** 2 * hard).sum(dim=1) / hard.sum(dim=1).clamp_min(1.0)


def random_partner(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A permutation of ``range(n)`` without fixed points when ``n > 1`` (a random cyclic shift of a shuffle)."""
    if n < 2:
        return torch.arange(n)
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(1)
    return perm


@register_mitigation("mixfair", "MixFairFace adapter: per-sample margin shift (f_mix.f_b)^2-(f_mix.f_a)^2 from 50/50 "
                     "feature-map mixing with a permuted partner, plus the released head's CIFP margin", (
                         Param("detach", "bool", False, "treat the shift (and CIFP term) as constant margins; false = "
                               "gradients flow through them, as in the released code"),
                         Param("cifp", "bool", True, "add the released head's CIFP margin (mean squared cosine of the "
                               "sample's hard negatives)"),
                     ))
class MixFairHooks(MethodHooks):
    """Hook point: ``margin_offsets`` = the MixFair shift."""

    def setup(self, setup: HookSetup) -> None:
        if setup.feature_channels <= 0:  # the trainer gives them for backbones with stages only
            raise SettingsError(_NEEDS_STAGES, field="mitigation")
        if getattr(setup.head, "margin", None) is None or type(setup.head).__name__ != "CosFaceHead":
            log.info("mixfair: the MixFair shift is a cosine-margin shift; with a non-cosface head it is added to "
                     "that head's margin as is")
        self.margin = head_margin(setup.head)
        self._bn_cache: list[nn.Module] | None = None

    def margin_offsets(self, ctx: StepContext) -> torch.Tensor:
        if ctx.feature_maps is None or ctx.forward_head is None:
            raise SettingsError(_NEEDS_STAGES, field="mitigation")
        perm = random_partner(ctx.feature_maps.shape[0], ctx.generator).to(ctx.feature_maps.device)
        detach = self.params["detach"]
        with (torch.no_grad() if detach else contextlib.nullcontext()), self._frozen_bn_stats(ctx):
            f_mix = ctx.forward_head(mix_feature_maps(ctx.feature_maps, perm))
        f_a = ctx.embeddings.detach() if detach else ctx.embeddings
        shift = mixfair_shift(f_a, f_a[perm], f_mix.float())
        if self.params["cifp"]:
            shift = shift + cifp_margin(ctx.head.cosine(f_a), ctx.labels, self.margin)
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
