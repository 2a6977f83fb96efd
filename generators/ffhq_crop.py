"""FFHQ-style face crops from five landmarks (for CUSP and the diffusion editor).

FFHQ's own alignment (Karras et al. 2019, ``align_images.py``) builds an oriented square from the eyes and mouth:
with ``e2e`` = eye-to-eye vector and ``e2m`` = eye-centre-to-mouth-centre vector, the square's half side is
``max(2.0 |e2e|, mouth_factor |e2m|)``, its x axis follows ``e2e - rot90(e2m)``, and its centre is
``eye_centre + 0.1 e2m``. ``mouth_factor`` is 1.8 for FFHQ (:data:`FFHQ_MOUTH_FACTOR`) and 2.2 for FFHQ-Aging
(:data:`FFHQ_AGING_MOUTH_FACTOR`, a larger crop showing more hair and neck). We apply that rule once to the ArcFace
5-point template to obtain a fixed 5-point *FFHQ template* (in a unit square), then align each face with a
least-squares similarity transform (Umeyama) from its detected points to that template scaled to ``size`` (224 or
256 for CUSP). Pixels outside the photo are filled by reflection (FFHQ pads by reflection and blurs; we only
reflect). This is an approximation of FFHQ's crop (it uses all five points, FFHQ uses 68-point eye/mouth centres).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np

FFHQ_MOUTH_FACTOR = 1.8
FFHQ_AGING_MOUTH_FACTOR = 2.2


@lru_cache(maxsize=8)
def ffhq_unit_template(mouth_factor: float = FFHQ_MOUTH_FACTOR) -> np.ndarray:
    """The five ArcFace-order points in FFHQ-style crop coordinates, as fractions of the side (x, y), for the crop
    whose half side is ``max(2.0 |e2e|, mouth_factor |e2m|)`` (read-only array)."""
    from agebias.data.align import ARCFACE_TEMPLATE

    pts = ARCFACE_TEMPLATE.astype(np.float64)
    eye_l, eye_r, mouth_l, mouth_r = pts[0], pts[1], pts[3], pts[4]
    eye_avg = (eye_l + eye_r) / 2
    e2e = eye_r - eye_l
    e2m = (mouth_l + mouth_r) / 2 - eye_avg
    x = e2e - np.flipud(e2m) * np.array([-1.0, 1.0])
    x /= np.hypot(*x)
    half = max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * float(mouth_factor))
    x *= half
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + e2m * 0.1
    origin = c - x - y  # top-left corner of the square
    basis = np.stack([2 * x, 2 * y], axis=1)  # columns: unit square axes in template pixels
    unit = np.linalg.solve(basis, (pts - origin).T).T  # template points in [0, 1]^2
    unit.setflags(write=False)
    return unit


FFHQ_UNIT_TEMPLATE = ffhq_unit_template(FFHQ_MOUTH_FACTOR)
"""The five ArcFace-order points in FFHQ crop coordinates (factor 1.8), as fractions of the side (x, y)."""


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src (N, 2) onto dst (N, 2); 2x3 matrix."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / ((s0 ** 2).sum() / len(src))
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def ffhq_crop(image: np.ndarray, landmarks5: Sequence[Sequence[float]] | np.ndarray, size: int,
              mouth_factor: float = FFHQ_MOUTH_FACTOR) -> np.ndarray:
    """uint8 (size, size, 3) FFHQ-style crop of ``image`` (uint8 RGB) given its five landmarks (ArcFace order);
    ``mouth_factor`` 1.8 = FFHQ, 2.2 = FFHQ-Aging."""
    src = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    m = similarity(src, ffhq_unit_template(float(mouth_factor)) * size)
    out = cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT101)
    return np.ascontiguousarray(out, dtype=np.uint8)
