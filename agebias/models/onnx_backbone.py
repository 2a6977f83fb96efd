"""Import a recognition ONNX file as a trainable torch backbone, the importer chosen by the graph's structure:
SFace's layout (depthwise convolutions, no residual ``Add``; :mod:`agebias.models.sface_import`) becomes an
:class:`~agebias.models.sface_net.SFaceNet`, anything else is read as an iresnet
(:mod:`agebias.models.onnx_import`). Both importers check the result against onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from agebias.models.onnx_file import read_onnx
from agebias.models.onnx_import import import_iresnet_onnx
from agebias.models.sface_import import import_sface_onnx, looks_like_sface


def import_onnx_backbone(path: str | os.PathLike, verify: bool = True) -> nn.Module:
    """The torch backbone of an iresnet or SFace-layout ONNX file, in eval mode (:class:`ModelError` otherwise)."""
    if looks_like_sface(read_onnx(Path(path))):
        return import_sface_onnx(path, verify=verify)
    return import_iresnet_onnx(path, verify=verify)
