"""What every embedder is: aligned face crops -> L2-normalised identity embeddings, computed in batches.

Every embedder takes uint8 (N, 112, 112, 3) **RGB** aligned crops and returns float32 (N, D) rows of unit L2 norm.
With ``flip=True`` the embedding is ``normalise(emb(x) + emb(flip_lr(x)))`` (insightface's verification protocol).
Backends subclass :class:`BatchedEmbedder` and implement ``_forward``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from agebias.errors import SettingsError
from agebias.models.preprocess import check_faces


@runtime_checkable
class Embedder(Protocol):
    """What every embedder offers."""

    name: str
    dim: int

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """uint8 (N, 112, 112, 3) RGB -> float32 (N, dim), each row L2-normalised."""
        ...


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (rows of zeros stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


class BatchedEmbedder:
    """Shared batching, flip fusion and normalisation; subclasses implement :meth:`_forward`."""

    name: str = "embedder"
    dim: int = 0
    input_size: int = 112

    def __init__(self, batch_size: int = 64, flip: bool = False):
        if batch_size < 1:
            raise SettingsError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.flip = bool(flip)

    def _forward(self, faces: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) RGB -> float32 (n, dim), not normalised."""
        raise NotImplementedError

    def embed(self, faces: np.ndarray) -> np.ndarray:
        faces = check_faces(faces, size=self.input_size)
        out = np.zeros((len(faces), self.dim), dtype=np.float32)
        for start in range(0, len(faces), self.batch_size):
            batch = faces[start:start + self.batch_size]
            emb = self._forward(batch)
            if self.flip:
                emb = emb + self._forward(np.ascontiguousarray(batch[:, :, ::-1, :]))
            out[start:start + len(batch)] = emb
        return l2_normalise(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, flip={self.flip})"
