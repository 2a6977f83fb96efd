"""Turn aligned face crops into network input.

Convention (arcface_torch): uint8 RGB crops, NHWC, 112x112 -> float32 NCHW ``(x / 255 - 0.5) / 0.5`` in [-1, 1],
computed in that order so results match arcface_torch's own preprocessing bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from agebias.errors import DataError


def check_faces(faces: np.ndarray, size: int | None = 112) -> np.ndarray:
    """Validate ``faces`` as uint8 (N, H, W, 3) RGB (a single (H, W, 3) crop gets a batch axis)."""
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[-1] != 3:
        raise DataError(f"expected face crops of shape (N, H, W, 3), got {tuple(faces.shape)}")
    if faces.dtype != np.uint8:
        raise DataError(f"expected uint8 face crops (0..255), got dtype {faces.dtype}")
    if size is not None and faces.shape[1:3] != (size, size):
        raise DataError(f"expected {size}x{size} aligned crops, got {faces.shape[2]}x{faces.shape[1]}")
    return faces


def to_tensor(faces: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float32 (N, 3, H, W) normalised ``(x / 255 - 0.5) / 0.5``."""
    faces = check_faces(faces, size=None)
    x = torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2).float()
    return x.div_(255).sub_(0.5).div_(0.5).contiguous()
