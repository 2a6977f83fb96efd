"""Margin heads for face-recognition training (insightface ``arcface_torch`` conventions).

A head holds one weight vector per training identity, shape ``(num_classes, embedding_dim)``. Embeddings and
weights are both L2-normalised, so the raw logits are ``cos(theta)`` in [-1, 1]; the head puts a margin on the
target class and multiplies every logit by the scale ``s``. Returned logits go to a (focal) cross-entropy.

- ``arcface``  (s=64, m=0.5): target ``cos(theta + m)``. Where ``theta + m > pi`` the function is no longer
  monotonic in theta; there insightface uses ``cos(theta) - sin(pi - m) * m`` instead (applied here).
- ``cosface``  (s=64, m=0.35): target ``cos(theta) - m``.
- ``combined`` (s=64, m1=1.0, m2=0.5, m3=0.0): target ``cos(m1 * theta + m2) - m3`` (insightface's
  ``CombinedMarginLoss``); with ``m1 == 1`` and ``m3 == 0`` it is exactly ``arcface`` (fix included), with
  ``m1 == 1`` and ``m2 == 0`` exactly ``cosface``.

Per-sample margin offsets (``margin_offsets``, shape ``(B,)``, radians for the angular margin, cosine units for
the additive one) let mitigation methods use a different margin per sample, e.g. per age group.
Heads are built by name: ``create_head("arcface", embedding_dim, num_classes, scale=64, margin=0.5)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from agebias.errors import DataError
from agebias.registry import Registry

HEADS: Registry[type["MarginHead"]] = Registry("head", field="head")


def list_heads() -> list[str]:
    return HEADS.names()


def create_head(name: str, embedding_dim: int, num_classes: int, **kwargs) -> "MarginHead":
    """Build a head by name; ``kwargs`` are the head's own (``scale``, ``margin``, ``m1``/``m2``/``m3``)."""
    cls = HEADS.get(name)
    if num_classes < 2:
        raise DataError(f"a margin head needs at least 2 training identities, got {num_classes}")
    return cls(embedding_dim, num_classes, **kwargs)


class MarginHead(nn.Module):
    """Normalised-softmax head: ``forward(embeddings, labels, margin_offsets=None) -> scaled logits (B, C)``."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0):
        super().__init__()
        self.embedding_dim = int(embedding_dim)
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``cos(theta)`` between each embedding and each class weight, shape ``(B, C)``, in fp32."""
        return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)

    def target_logit(self, cos_t: torch.Tensor, margin_offsets: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                margin_offsets: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(embeddings)
        idx = torch.arange(cos.shape[0], device=cos.device)
        cos_t = cos[idx, labels]
        if margin_offsets is not None:
            margin_offsets = margin_offsets.to(cos.device, torch.float32).reshape(-1)
        new_t = self.target_logit(cos_t, margin_offsets)
        onehot = F.one_hot(labels, self.num_classes).to(cos.dtype)
        logits = cos + onehot * (new_t - cos_t).unsqueeze(1)
        return logits * self.scale

    def extra_repr(self) -> str:
        return f"embedding_dim={self.embedding_dim}, num_classes={self.num_classes}, scale={self.scale}"


def _arc_target(cos_t: torch.Tensor, m: torch.Tensor | float) -> torch.Tensor:
    """``cos(theta + m)``, with insightface's ``cos(theta) - sin(pi - m) * m`` where ``theta + m > pi``."""
    m = torch.as_tensor(m, dtype=cos_t.dtype, device=cos_t.device)
    sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp_min(0.0))
    cos_tm = cos_t * torch.cos(m) - sin_t * torch.sin(m)
    threshold = torch.cos(math.pi - m)  # theta + m > pi  <=>  cos(theta) < cos(pi - m)
    return torch.where(cos_t > threshold, cos_tm, cos_t - torch.sin(math.pi - m) * m)


@HEADS.register("arcface")
class ArcFaceHead(MarginHead):
    """Additive angular margin: target ``cos(theta + m)`` (non-monotonic region fixed as insightface does)."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.5):
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = float(margin)

    def target_logit(self, cos_t, margin_offsets):
        m = self.margin if margin_offsets is None else self.margin + margin_offsets
        return _arc_target(cos_t, m)


@HEADS.register("cosface")
class CosFaceHead(MarginHead):
    """Additive cosine margin: target ``cos(theta) - m``."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, margin: float = 0.35):
        super().__init__(embedding_dim, num_classes, scale)
        self.margin = float(margin)

    def target_logit(self, cos_t, margin_offsets):
        m = self.margin if margin_offsets is None else self.margin + margin_offsets
        return cos_t - m


@HEADS.register("combined")
class CombinedMarginHead(MarginHead):
    """insightface ``CombinedMarginLoss``: target ``cos(m1 * theta + m2) - m3``.

    ``margin`` (if given) sets ``m2``. Margin offsets are added to ``m2`` when ``m2 > 0`` (angular), else to ``m3``.
    """

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 64.0, m1: float = 1.0,
                 m2: float = 0.5, m3: float = 0.0, margin: float | None = None):
        super().__init__(embedding_dim, num_classes, scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2 if margin is None else margin), float(m3)

    def target_logit(self, cos_t, margin_offsets):
        m2, m3 = self.m2, self.m3
        if margin_offsets is not None:
            if self.m2 > 0:
                m2 = m2 + margin_offsets
            else:
                m3 = m3 + margin_offsets
        if self.m1 == 1.0 and self.m2 == 0.0:  # CosFace (offsets went to m3)
            return cos_t - m3
        if self.m1 == 1.0 and self.m3 == 0.0:  # ArcFace, non-monotonic fix included
            return _arc_target(cos_t, m2)
        theta = torch.acos(cos_t.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
        return torch.cos(self.m1 * theta + m2) - m3


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, focal_gamma: float = 0.0,
                reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the head's logits; with ``focal_gamma > 0`` the focal loss ``-(1 - p_t)^gamma log p_t``
    (FR-NAS uses gamma = 2). ``reduction``: ``mean`` | ``none``."""
    logp = F.log_softmax(logits.float(), dim=1)
    logp_t = logp.gather(1, labels.view(-1, 1)).squeeze(1)
    loss = -logp_t
    if focal_gamma > 0:
        loss = loss * (1.0 - logp_t.exp()).clamp_min(0.0).pow(focal_gamma)
    return loss.mean() if reduction == "mean" else loss
