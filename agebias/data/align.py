"""5-point similarity alignment to the ArcFace 112x112 template (insightface ``arcface_torch`` convention).

Points are (x, y) pixels in the order left eye, right eye, nose tip, left mouth corner, right mouth corner, where
"left eye" is the one with the smaller x in a frontal photo. The transform is a least-squares similarity
(rotation, uniform scale, translation; Umeyama) from the image points to the template, as insightface does.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""Target positions (x, y) of the five points in a 112x112 crop."""


def template_for(size: int = 112) -> np.ndarray:
    """The template scaled to a ``size`` x ``size`` crop (float32, shape (5, 2))."""
    return (ARCFACE_TEMPLATE * (size / 112.0)).astype(np.float32)


def estimate_transform(landmarks5: Sequence[Sequence[float]] | np.ndarray, size: int = 112) -> np.ndarray:
    """The 2x3 similarity matrix mapping image points onto the template (least squares, Umeyama)."""
    src = np.asarray(landmarks5, dtype=np.float64).reshape(-1, 2)
    if src.shape != (5, 2) or not np.all(np.isfinite(src)):
        raise ValueError(f"need 5 finite (x, y) landmarks, got shape {src.shape}")
    dst = template_for(size).astype(np.float64)
    return _umeyama_similarity(src, dst)


def _umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform src -> dst (Umeyama 1991, no reflection); returns 2x3."""
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (s0 ** 2).sum() / n
    if var_s <= 1e-12:
        raise ValueError("degenerate landmarks (all points coincide)")
    scale = float((sig * d).sum() / var_s)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def transform_points(matrix: np.ndarray, points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def align_face(image: np.ndarray, landmarks5: Sequence[Sequence[float]] | np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` (uint8 H, W, 3 RGB) so the five landmarks land on the template; returns uint8 (size, size, 3).

    Bilinear interpolation; pixels outside the image are black (insightface's ``norm_crop`` does the same).
    """
    matrix = estimate_transform(landmarks5, size)
    out = cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.ascontiguousarray(out, dtype=np.uint8)
