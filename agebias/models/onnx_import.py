"""Import an iresnet ONNX (e.g. insightface ``w600k_r50.onnx``) back into our torch :class:`IResNet`.

The graph is walked by structure, not names (see :func:`import_iresnet_onnx`); the result expects our
``(x/255-0.5)/0.5`` input and is checked against onnxruntime on random crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agebias.errors import ModelError
from agebias.models.iresnet import IResNet
from agebias.models.onnx_dequantize import dequantized_constants
from agebias.models.onnx_embedder import OnnxEmbedder
from agebias.models.onnx_file import input_normalisation, node_attr, read_onnx
from agebias.models.torch_embedder import TorchEmbedder


_SHAPE_OPS = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze")


class OnnxGraph:
    """Producers, consumers and constant values of an ONNX graph; quantised weights (``DequantizeLinear`` of
    constants) count as the float constants they stand for (see :mod:`agebias.models.onnx_dequantize`)."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.nodes = list(model.graph.node)
        self.values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.values[node.output[0]] = numpy_helper.to_array(attr.t)
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
        self.values.update(dequantized_constants(model, self.values))
        self.input_names = [i.name for i in model.graph.input if i.name not in self.values]

    def const(self, name: str) -> np.ndarray:
        """The constant behind ``name`` as float32, computed through Identity/Cast/Reshape/Flatten/Squeeze/
        Unsqueeze nodes (so a weight stored flat and reshaped in the graph comes back in its used shape)."""
        return np.asarray(self._value(name, 0), dtype=np.float32)

    def _value(self, name: str, depth: int) -> np.ndarray:
        if name in self.values:
            return np.asarray(self.values[name])
        node = self.producer.get(name)
        if node is None or node.op_type not in _SHAPE_OPS or depth > 8:
            raise ModelError(f"ONNX import: tensor '{name}' is not a constant")
        x = self._value(node.input[0], depth + 1)
        if node.op_type in ("Identity", "Cast"):
            return x
        if node.op_type == "Flatten":
            axis = int(node_attr(node, "axis", 1)) % max(x.ndim, 1)
            return x.reshape(int(np.prod(x.shape[:axis])), -1)
        if node.op_type == "Reshape":
            shape = [int(v) for v in self._value(node.input[1], depth + 1).reshape(-1)]
            return x.reshape([x.shape[i] if v == 0 else v for i, v in enumerate(shape)])
        axes = node_attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(v) for v in self._value(node.input[1], depth + 1).reshape(-1)]
        if node.op_type == "Squeeze":
            return np.squeeze(x, axis=None if axes is None else tuple(a % x.ndim for a in axes))
        rank = x.ndim + len(axes or ())
        for a in sorted(a % rank for a in axes or ()):
            x = np.expand_dims(x, a)
        return x

    def is_const(self, name: str) -> bool:
        try:
            self.const(name)
            return True
        except ModelError:
            return False

    def sole_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def dynamic_input(self, node) -> str:
        for name in node.input:
            if name and not self.is_const(name):
                return name
        raise ModelError(f"ONNX import: node {node.name} has no data input")


def input_affine(g: OnnxGraph, first_conv) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``a, b`` such that the first Conv sees ``a * graph_input + b`` (Sub/Mul/Div/Add at the input)."""
    a, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    chain = []
    name = first_conv.input[0]
    while name not in g.input_names:
        node = g.producer.get(name)
        if node is None:
            raise ModelError("ONNX import: cannot trace the input of the first convolution")
        chain.append(node)
        name = g.dynamic_input(node)
    for node in reversed(chain):
        consts = [g.const(n).reshape(-1) for n in node.input if n and g.is_const(n)]
        c = consts[0] if consts else np.zeros(1, np.float32)
        c = np.broadcast_to(c, (3,)) if c.size in (1, 3) else None
        if node.op_type in ("Identity", "Cast"):
            continue
        if c is None:
            raise ModelError(f"ONNX import: unsupported input normalisation node {node.op_type}")
        if node.op_type == "Sub":
            if node.input[0] in g.values or g.is_const(node.input[0]):
                a, b = -a, c - b
            else:
                b = b - c
        elif node.op_type == "Add":
            b = b + c
        elif node.op_type == "Mul":
            a, b = a * c, b * c
        elif node.op_type == "Div":
            a, b = a / c, b / c
        else:
            raise ModelError(f"ONNX import: unsupported op {node.op_type} before the first convolution")
    return a.astype(np.float32), b.astype(np.float32)


@dataclass
class _ConvBN:
    conv: object
    bn: object | None  # the BatchNormalization right after the Conv (None when folded into the Conv's bias)


def _conv_bn(g: OnnxGraph, conv) -> _ConvBN:
    return _ConvBN(conv, g.sole_consumer(conv.output[0], "BatchNormalization"))


def walk_back_to(g: OnnxGraph, name: str, op_type: str, through=("Flatten", "Reshape", "Identity", "Dropout")):
    node = g.producer.get(name)
    while node is not None and node.op_type in through:
        node = g.producer.get(g.dynamic_input(node))
    return node if node is not None and node.op_type == op_type else None


def walk_forward_to(g: OnnxGraph, name: str, op_type: str, through=("Unsqueeze", "Squeeze", "Reshape", "Identity")):
    node = g.sole_consumer(name, op_type)
    while node is None:
        users = g.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type not in through:
            return None
        name = users[0].output[0]
        node = g.sole_consumer(name, op_type)
    return node


def _set_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, g: OnnxGraph, cb: _ConvBN, in_scale: np.ndarray | None = None):
    w = g.const(cb.conv.input[1])
    if tuple(w.shape) != tuple(conv.weight.shape):
        raise ModelError(f"ONNX import: conv {cb.conv.name} weight {tuple(w.shape)} vs model "
                         f"{tuple(conv.weight.shape)}")
    if in_scale is not None:
        w = w * in_scale.reshape(1, -1, 1, 1)
    conv.weight.data.copy_(torch.tensor(np.ascontiguousarray(w)))
    set_conv_batchnorm(bn, g, cb.conv, cb.bn)


def set_conv_batchnorm(bn: nn.modules.batchnorm._BatchNorm, g: OnnxGraph, conv, bn_node) -> None:
    """The BatchNorm after ``conv`` (which has no bias in torch): ``bn_node``'s values with the conv's bias (if any)
    folded into the running mean; or, when the exporter folded the BN into the conv (``bn_node`` None), an identity
    BN carrying the conv's bias."""
    has_bias = len(conv.input) > 2 and conv.input[2]
    bias = g.const(conv.input[2]).reshape(-1) if has_bias else np.zeros(bn.num_features, np.float32)
    if bn_node is None:
        identity_batchnorm(bn, bias)
        return
    set_batchnorm(bn, g, bn_node)
    bn.running_mean.data.sub_(torch.tensor(bias))


def identity_batchnorm(bn: nn.modules.batchnorm._BatchNorm, bias: np.ndarray) -> None:
    bn.weight.data.fill_(1.0)
    bn.bias.data.copy_(torch.tensor(np.ascontiguousarray(bias, dtype=np.float32)))
    bn.running_mean.data.zero_()
    bn.running_var.data.fill_(1.0 - bn.eps)


def set_batchnorm(bn: nn.modules.batchnorm._BatchNorm, g: OnnxGraph, node) -> None:
    scale, bias, mean, var = (g.const(n).reshape(-1) for n in node.input[1:5])
    if scale.size != bn.num_features:
        raise ModelError(f"ONNX import: BatchNormalization {node.name} has {scale.size} channels, model "
                         f"{bn.num_features}")
    eps = float(node_attr(node, "epsilon", 1e-5))
    for t, v in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var + eps - bn.eps)):
        t.data.copy_(torch.tensor(np.ascontiguousarray(v)))


def set_prelu(prelu: nn.PReLU, g: OnnxGraph, node) -> None:
    slope = g.const(node.input[1]).reshape(-1)
    if slope.size != prelu.weight.numel():
        raise ModelError(f"ONNX import: PRelu {node.name} has {slope.size} slopes, model {prelu.weight.numel()}")
    prelu.weight.data.copy_(torch.tensor(np.ascontiguousarray(slope)))


def import_iresnet_onnx(path: str | os.PathLike, verify: bool = True) -> IResNet:
    """Rebuild an iresnet exported from torch (e.g. insightface ``w600k_r50.onnx``) as our :class:`IResNet`.

    Walks the graph by structure, not names: the 3x3 Convs in order are the stem and each block's conv1/conv2
    (a stride-2 conv2 opens a stage), 1x1 Convs are downsamples; a BatchNormalization directly after a Conv is
    that Conv's BN, or, when the exporter folded it into the Conv, an identity BN carries the Conv's bias.
    Input Sub/Mul/Div normalisation is folded into the stem conv so that the returned model expects our
    ``(x/255-0.5)/0.5`` input and reproduces onnxruntime fed with insightface's normalisation.
    With ``verify`` both run on a few random crops and must agree (cosine >= 0.9999), else :class:`ModelError`.
    """
    path = Path(path)
    model = read_onnx(path)
    try:
        net = _import_iresnet(path, model)
    except ModelError as err:
        text = str(err)
        raise ModelError(text if "iresnet" in text else f"{path}: not an importable iresnet ONNX ({text})") from None
    if verify:
        cos = worst_cosine(net, path)
        if cos < 0.9999:
            raise ModelError(f"{path}: imported iresnet disagrees with onnxruntime (worst cosine {cos:.5f}); the graph "
                             "has a layout this importer does not know")
    return net


def worst_cosine(net: nn.Module, path: str | os.PathLike, faces: np.ndarray | None = None,
                 input_mean: float | None = None, input_std: float | None = None) -> float:
    """Worst cosine between ``net`` (torch, fed the toolkit's ``(x/255-0.5)/0.5``) and onnxruntime running ``path``
    fed ``(x - input_mean) / input_std`` of RGB 0..255 (default: the file's own rule, see
    :func:`~agebias.models.onnx_file.input_normalisation`), over ``faces`` (uint8 (N, 112, 112, 3) RGB crops;
    default: two random crops)."""
    if faces is None:
        faces = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    a = OnnxEmbedder(path, device="cpu", batch_size=len(faces), input_mean=input_mean, input_std=input_std)
    b = TorchEmbedder(net, device="cpu", batch_size=len(faces))
    return float((a.embed(faces) * b.embed(faces)).sum(1).min())


def _import_iresnet(path: Path, model) -> IResNet:
    g = OnnxGraph(model)
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    if not convs:
        raise ModelError(f"{path}: no Conv nodes; not an iresnet ONNX")
    k3 = [c for c in convs if list(node_attr(c, "kernel_shape", g.const(c.input[1]).shape[2:])) == [3, 3]]
    k1 = [c for c in convs if list(node_attr(c, "kernel_shape", g.const(c.input[1]).shape[2:])) == [1, 1]]
    prelus = [n for n in g.nodes if n.op_type == "PRelu"]
    gemms = [n for n in g.nodes if n.op_type in ("Gemm", "MatMul")]
    if len(k3) + len(k1) != len(convs) or len(k3) < 3 or (len(k3) - 1) % 2 or not gemms:
        raise ModelError(f"{path}: graph does not look like an iresnet ({len(k3)} 3x3 convs, {len(k1)} 1x1 convs, "
                         f"{len(gemms)} Gemm/MatMul)")
    stem, pairs = k3[0], [(k3[i], k3[i + 1]) for i in range(1, len(k3), 2)]
    depths: list[int] = []
    widths: list[int] = []
    for c1, c2 in pairs:
        if list(node_attr(c2, "strides", [1, 1])) == [2, 2] or not depths:
            depths.append(0)
            widths.append(int(g.const(c1.input[1]).shape[0]))
        depths[-1] += 1
    if len(depths) != 4 or len(k1) != 4 or len(prelus) != 1 + len(pairs):
        raise ModelError(f"{path}: graph does not look like an iresnet (stages {depths}, {len(k1)} downsamples, "
                         f"{len(prelus)} PRelu)")
    gemm = gemms[-1]
    fc_w = g.const(gemm.input[1])
    if gemm.op_type == "Gemm":
        if not int(node_attr(gemm, "transB", 0)):
            fc_w = fc_w.T
        fc_b = g.const(gemm.input[2]).reshape(-1) if len(gemm.input) > 2 and gemm.input[2] else None
        fc_out = gemm.output[0]
    else:  # MatMul (+ Add bias)
        fc_w = fc_w.T
        add = g.sole_consumer(gemm.output[0], "Add")
        fc_b = g.const([n for n in add.input if n != gemm.output[0]][0]).reshape(-1) if add is not None else None
        fc_out = add.output[0] if add is not None else gemm.output[0]
    num_features = int(fc_w.shape[0])
    stem_width = int(g.const(stem.input[1]).shape[0])
    net = IResNet(depths, num_features=num_features, widths=widths, stem_width=stem_width)

    # input normalisation -> scale on the stem conv's input channels
    mean, std = input_normalisation(path, model)
    a, b = input_affine(g, stem)
    alpha = a * 127.5 / std
    beta = a * (127.5 - mean) / std + b
    if np.abs(beta).max() > 1e-3 * max(1.0, float(np.abs(alpha).max())):
        raise ModelError(f"{path}: input normalisation with a per-channel offset {beta.tolist()} cannot be folded "
                         "into the torch iresnet")

    with torch.no_grad():
        _set_conv(net.conv1, net.bn1, g, _conv_bn(g, stem), in_scale=alpha)
        set_prelu(net.prelu, g, prelus[0])
        blocks = [blk for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for blk in layer]
        for i, (blk, (c1, c2)) in enumerate(zip(blocks, pairs, strict=True)):
            pre = walk_back_to(g, c1.input[0], "BatchNormalization", through=("Identity",))
            if pre is None:
                raise ModelError(f"{path}: block {i}: no BatchNormalization before conv {c1.name}")
            set_batchnorm(blk.bn1, g, pre)
            _set_conv(blk.conv1, blk.bn2, g, _conv_bn(g, c1))
            set_prelu(blk.prelu, g, prelus[1 + i])
            _set_conv(blk.conv2, blk.bn3, g, _conv_bn(g, c2))
        downsampled = [blocks[sum(depths[:s])] for s in range(4)]
        for blk, conv in zip(downsampled, k1, strict=True):
            _set_conv(blk.downsample[0], blk.downsample[1], g, _conv_bn(g, conv))
        tail = walk_back_to(g, gemm.input[0], "BatchNormalization")
        if tail is None:
            raise ModelError(f"{path}: no BatchNormalization before the final fully connected layer")
        set_batchnorm(net.bn2, g, tail)
        if tuple(fc_w.shape) != tuple(net.fc.weight.shape):
            raise ModelError(f"{path}: fc weight {tuple(fc_w.shape)} vs model {tuple(net.fc.weight.shape)}")
        net.fc.weight.copy_(torch.tensor(np.ascontiguousarray(fc_w)))
        feat = walk_forward_to(g, fc_out, "BatchNormalization")
        if feat is not None:
            net.fc.bias.copy_(torch.tensor(fc_b) if fc_b is not None else torch.zeros(num_features))
            set_batchnorm(net.features, g, feat)
        else:  # features BN folded into the Gemm: identity features BN
            net.fc.bias.zero_()
            identity_batchnorm(net.features, fc_b if fc_b is not None else np.zeros(num_features, np.float32))
    return net.eval()
