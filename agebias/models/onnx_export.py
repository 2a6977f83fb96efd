"""Export a backbone to ONNX in insightface's recognition layout.

The exported graph takes input ``input.1``: NCHW float32 RGB normalised ``(x/255-0.5)/0.5`` (arcface_torch's
convention), with a dynamic batch axis, and returns ``embedding`` (not L2-normalised).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from agebias.atomic import atomic_path

INPUT_NAME, OUTPUT_NAME = "input.1", "embedding"


def is_toolkit_export(model) -> bool:
    """Whether an ``onnx.ModelProto`` has this module's layout (input ``input.1``, output ``embedding``), i.e. takes
    the toolkit's ``(x/255-0.5)/0.5`` input."""
    return [i.name for i in model.graph.input[:1]] == [INPUT_NAME] and \
        [o.name for o in model.graph.output[:1]] == [OUTPUT_NAME]


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 17, input_size: int = 112,
                do_constant_folding: bool = True, fold_batchnorm: bool = False) -> Path:
    """Export ``model`` (NCHW float input normalised ``(x/255-0.5)/0.5``) with a dynamic batch axis, atomically.

    Input ``input.1``, output ``embedding`` (not normalised). ``fold_batchnorm`` lets the exporter fold each
    BatchNorm that follows a Conv into the Conv (smaller, faster graph; still importable).
    """
    path = Path(path)
    net = copy.deepcopy(getattr(model, "module", model)).float().cpu().eval()
    dummy = torch.zeros(1, 3, input_size, input_size)
    mode = torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(tmp), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=do_constant_folding, training=mode)
    return path
