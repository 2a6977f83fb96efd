"""Margin heads: hand-computed target logits, insightface's non-monotonic ArcFace fix, focal loss, registry."""

from __future__ import annotations

import math

import pytest
import torch

from agebias.errors import UserError
from agebias.models.heads import ArcFaceHead, CombinedMarginHead, CosFaceHead, create_head, list_heads, margin_loss


def head_at_angles(cls, thetas, **kw):
    """A 2-class head whose class-0 weight is the x axis; embeddings at the given angles to it."""
    head = cls(2, 2, scale=1.0, **kw)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    t = torch.tensor(thetas, dtype=torch.float64).float()
    emb = torch.stack([torch.cos(t), torch.sin(t)], dim=1) * 3.0  # norm must not matter
    return head, emb, torch.zeros(len(thetas), dtype=torch.long)


def test_arcface_target_is_cos_theta_plus_m_and_other_logits_untouched():
    head, emb, y = head_at_angles(ArcFaceHead, [0.3, 1.0], margin=0.5)
    out = head(emb, y)
    assert out[:, 0].tolist() == pytest.approx([math.cos(0.8), math.cos(1.5)], abs=1e-6)
    assert out[:, 1].tolist() == pytest.approx([math.sin(0.3), math.sin(1.0)], abs=1e-6)


def test_arcface_non_monotonic_region_uses_insightface_fix():
    m = 0.5
    theta = 2.9  # theta + m > pi
    head, emb, y = head_at_angles(ArcFaceHead, [theta], margin=m)
    expected = math.cos(theta) - math.sin(math.pi - m) * m
    assert head(emb, y)[0, 0].item() == pytest.approx(expected, abs=1e-6)
    # the fixed target keeps decreasing as theta grows (monotonic), unlike cos(theta + m)
    thetas = [2.5, 2.7, 2.9, 3.1]
    head, emb, y = head_at_angles(ArcFaceHead, thetas, margin=m)
    vals = head(emb, y)[:, 0].tolist()
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False))


def test_cosface_and_combined_formulas():
    head, emb, y = head_at_angles(CosFaceHead, [0.4], margin=0.35)
    assert head(emb, y)[0, 0].item() == pytest.approx(math.cos(0.4) - 0.35, abs=1e-6)
    head, emb, y = head_at_angles(CombinedMarginHead, [0.4], m1=1.2, m2=0.1, m3=0.05)
    assert head(emb, y)[0, 0].item() == pytest.approx(math.cos(1.2 * 0.4 + 0.1) - 0.05, abs=1e-5)
    arc, emb, y = head_at_angles(ArcFaceHead, [0.4, 2.9], margin=0.5)
    comb, _, _ = head_at_angles(CombinedMarginHead, [0.4, 2.9], m1=1.0, m2=0.5, m3=0.0)
    assert torch.allclose(arc(emb, y), comb(emb, y))


def test_scale_and_per_sample_margin_offsets():
    head = CosFaceHead(2, 2, scale=64.0, margin=0.35)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0])
    out = head(emb, y, margin_offsets=torch.tensor([0.0, 0.1]))
    assert out[:, 0].tolist() == pytest.approx([64 * 0.65, 64 * 0.55], abs=1e-4)


def test_gradients_flow_to_weights_and_embeddings():
    head = create_head("arcface", 8, 5)
    emb = torch.randn(4, 8, requires_grad=True)
    loss = margin_loss(head(emb, torch.tensor([0, 1, 2, 3])), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert emb.grad is not None and head.weight.grad.abs().sum() > 0


def test_focal_loss_reduces_easy_examples():
    logits = torch.tensor([[5.0, 0.0], [0.0, 0.2]])
    y = torch.tensor([0, 0])
    ce = margin_loss(logits, y, reduction="none")
    focal = margin_loss(logits, y, focal_gamma=2.0, reduction="none")
    p = torch.softmax(logits, 1)[:, 0]
    assert focal.tolist() == pytest.approx(((1 - p) ** 2 * ce).tolist(), rel=1e-5)
    assert focal[0] / ce[0] < focal[1] / ce[1]


def test_registry():
    assert {"arcface", "cosface", "combined"} <= set(list_heads())
    with pytest.raises(UserError, match="unknown head"):
        create_head("magic", 8, 4)
    with pytest.raises(UserError, match="at least 2"):
        create_head("arcface", 8, 1)


def test_combined_offsets_go_to_the_active_margin():
    cos_like, emb, y = head_at_angles(CombinedMarginHead, [0.4], m1=1.0, m2=0.0, m3=0.0)
    out = cos_like(emb, y, margin_offsets=torch.tensor([0.2]))
    assert out[0, 0].item() == pytest.approx(math.cos(0.4) - 0.2, abs=1e-6)
    arc_like, emb, y = head_at_angles(CombinedMarginHead, [0.4], m1=1.0, m2=0.5, m3=0.0)
    out = arc_like(emb, y, margin_offsets=torch.tensor([0.1]))
    assert out[0, 0].item() == pytest.approx(math.cos(0.4 + 0.6), abs=1e-6)
