"""ONNX export of the fine-tuned backbone (delegates to :func:`agebias.models.onnx.export_onnx`)."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Write ``model`` as ONNX (input ``input.1`` NCHW normalised ``(x/255-0.5)/0.5``, output ``embedding``)."""
    from agebias.models.onnx import export_onnx as _export

    return _export(model, path)
