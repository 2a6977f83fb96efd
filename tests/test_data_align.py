"""The 5-point similarity alignment to the ArcFace template."""

from __future__ import annotations

import numpy as np
import pytest

from agebias.data.align import ARCFACE_TEMPLATE, align_face, estimate_transform, template_for, transform_points
from helpers_faces import face_landmarks, synthetic_face


def test_template_values():
    assert ARCFACE_TEMPLATE.shape == (5, 2) and ARCFACE_TEMPLATE.dtype == np.float32
    assert ARCFACE_TEMPLATE[0].tolist() == pytest.approx([38.2946, 51.6963])
    assert ARCFACE_TEMPLATE[4].tolist() == pytest.approx([70.7299, 92.2041])
    assert template_for(224)[1].tolist() == pytest.approx((ARCFACE_TEMPLATE[1] * 2).tolist())


def test_identity_on_template():
    m = estimate_transform(ARCFACE_TEMPLATE)
    assert np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-6)


def test_recovers_similarity_exactly():
    five = face_landmarks(3)  # template rotated, scaled and shifted
    m = estimate_transform(five)
    assert np.abs(transform_points(m, five) - ARCFACE_TEMPLATE).max() < 1e-3
    a, b = m[0, 0], m[1, 0]
    assert np.isclose(m[1, 1], a) and np.isclose(m[0, 1], -b)  # rotation + uniform scale, no shear/reflection


def test_least_squares_with_noise_is_close():
    rng = np.random.default_rng(1)
    five = face_landmarks(4) + rng.normal(0, 0.5, (5, 2))
    m = estimate_transform(five)
    assert np.abs(transform_points(m, five) - ARCFACE_TEMPLATE).max() < 2.5


def _dark_centroid(crop, x, y, r=7):
    x, y = int(round(x)), int(round(y))
    win = crop[y - r:y + r + 1, x - r:x + r + 1].astype(int).sum(2)
    ys, xs = np.nonzero(win < 200)
    return x - r + xs.mean(), y - r + ys.mean()


def test_align_face_puts_dots_on_template():
    five = face_landmarks(5)
    crop = align_face(synthetic_face(five, seed=5), five)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for (tx, ty) in ARCFACE_TEMPLATE:
        cx, cy = _dark_centroid(crop, tx, ty)
        assert abs(cx - tx) < 1.0 and abs(cy - ty) < 1.0


def test_bad_landmarks_raise():
    with pytest.raises(ValueError):
        estimate_transform(np.zeros((4, 2)))
    with pytest.raises(ValueError):
        estimate_transform(np.ones((5, 2)))
    with pytest.raises(ValueError):
        estimate_transform(np.full((5, 2), np.nan))
