"""ONNX: export a backbone, run an insightface-style recognition ONNX, import an iresnet ONNX back into torch.

Input convention of recognition ONNX files (insightface model zoo): NCHW float32 RGB, ``(x - mean) / std`` where
``mean, std`` are 0, 1 when the graph starts with its own ``Sub``/``Mul`` normalisation nodes and 127.5, 127.5
otherwise (the rule of insightface's ``model_zoo.ArcFaceONNX``, reused here when insightface is installed).
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agebias.atomic import atomic_path
from agebias.errors import UserError
from agebias.models.embedder import BatchedEmbedder, resolve_device
from agebias.models.iresnet import IResNet


# --------------------------------------------------------------------------------------------------- export

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
        torch.onnx.export(net, (dummy,), str(tmp), dynamo=False, opset_version=opset, input_names=["input.1"],
                          output_names=["embedding"],
                          dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
                          do_constant_folding=do_constant_folding, training=mode)
    return path


# ----------------------------------------------------------------------------------------------- onnxruntime

def _load_onnx(path: Path):
    import onnx

    if not path.exists():
        raise UserError(f"ONNX model not found: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        return onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError / various
        reason = str(err).splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable ONNX model ({reason})") from None


def _clean_inputs(model):
    """Drop graph inputs that are initializers, node outputs or unused (old converters list weights as inputs)."""
    produced = {o for n in model.graph.node for o in n.output} | {t.name for t in model.graph.initializer}
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.input if i.name not in produced and i.name in used]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return model


def insightface_input_normalisation(model) -> tuple[float, float]:
    """``(mean, std)`` by insightface's ArcFaceONNX rule: Sub and Mul among the first 8 node names -> (0, 1)."""
    names = [node.name for node in model.graph.node[:8]]
    has_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    has_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _onnx_normalisation(path: Path, model) -> tuple[float, float]:
    """Ask insightface's own loader when it is installed; otherwise apply the same rule ourselves."""
    try:
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    except Exception:  # insightface is optional
        return insightface_input_normalisation(model)

    class _NoSession:  # ArcFaceONNX reads the graph, and the input/output names from the session we pass
        def __init__(self, model):
            self._model = model

        def get_inputs(self):
            return [_Meta(i.name, [d.dim_value or d.dim_param or None for d in i.type.tensor_type.shape.dim])
                    for i in self._model.graph.input[:1]]

        def get_outputs(self):
            return [_Meta(o.name, []) for o in self._model.graph.output[:1]]

    try:
        rec = ArcFaceONNX(model_file=str(path), session=_NoSession(model))
        return float(rec.input_mean), float(rec.input_std)
    except Exception:
        return insightface_input_normalisation(model)


@dataclass
class _Meta:
    name: str
    shape: list = field(default_factory=list)


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEmbedder(BatchedEmbedder):
    """Run a recognition ONNX (NCHW float input ``(x - mean) / std``) in onnxruntime.

    ``input_mean``/``input_std`` default to insightface's rule; ``bgr=True`` feeds channels in BGR order.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None, batch_size: int = 64,
                 flip: bool = False, input_mean: float | None = None, input_std: float | None = None,
                 bgr: bool = False, name: str | None = None, threads: int | None = None):
        import onnxruntime as ort

        super().__init__(batch_size=batch_size, flip=flip)
        path = Path(path)
        model = _load_onnx(path)
        if input_mean is None or input_std is None:
            mean, std = _onnx_normalisation(path, model)
            input_mean = mean if input_mean is None else input_mean
            input_std = std if input_std is None else input_std
        self.input_mean, self.input_std, self.bgr = float(input_mean), float(input_std), bool(bgr)
        self.device = resolve_device(device)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        self._options, self._providers = options, _providers(self.device)
        clean = _clean_inputs(copy.deepcopy(model))
        self.session = self._session(clean, path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise UserError(f"{path}: expected a recognition model with NCHW 3-channel input, got input shape {shape}")
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_size = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else 112
        if self.fixed_batch == 1:
            self._try_dynamic_batch(clean, path)
        self.output_name = self.session.get_outputs()[0].name
        self.name = name or path.name
        self.path = path
        self.dim = int(self._forward(np.zeros((1, self.input_size, self.input_size, 3), np.uint8)).shape[1])

    def _session(self, model, path: Path):
        import onnxruntime as ort

        try:
            return ort.InferenceSession(model.SerializeToString(), sess_options=self._options,
                                        providers=self._providers)
        except Exception as err:
            raise UserError(f"{path}: onnxruntime cannot run this model ({str(err).splitlines()[0][:160]})") from None

    def _try_dynamic_batch(self, model, path: Path) -> None:
        """Files exported with batch 1 (e.g. SFace) often run any batch: relax the axis when results agree."""
        relaxed = copy.deepcopy(model)
        for value in (relaxed.graph.input[0], relaxed.graph.output[0]):
            dims = value.type.tensor_type.shape.dim
            if dims:
                dims[0].dim_param = "batch"
        try:
            session = self._session(relaxed, path)
            out_name = session.get_outputs()[0].name
            x = np.random.default_rng(0).uniform(-1, 1, (2, 3, self.input_size, self.input_size)).astype(np.float32)
            both = session.run([out_name], {self.input_name: x})[0]
            single = np.concatenate([self.session.run([out_name], {self.input_name: x[i:i + 1]})[0] for i in range(2)])
        except Exception:
            return
        if both.shape == single.shape and np.allclose(both, single, rtol=1e-4, atol=1e-4 * np.abs(single).max()):
            self.session, self.fixed_batch = session, None

    def _blob(self, faces: np.ndarray) -> np.ndarray:
        x = faces[..., ::-1] if self.bgr else faces
        x = (x.astype(np.float32) - np.float32(self.input_mean)) / np.float32(self.input_std)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def _forward(self, faces: np.ndarray) -> np.ndarray:
        blob = self._blob(faces)
        if self.fixed_batch is None:
            out = self.session.run([self.output_name], {self.input_name: blob})[0]
        else:
            step = self.fixed_batch
            parts = []
            for i in range(0, len(blob), step):
                chunk = blob[i:i + step]
                pad = step - len(chunk)
                if pad:
                    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)])
                parts.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:step - pad])
            out = np.concatenate(parts)
        return np.asarray(out, dtype=np.float32).reshape(len(faces), -1)


# -------------------------------------------------------------------------------------------------- import

class _Graph:
    """Producers, consumers and constant values of an ONNX graph."""

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
        self.input_names = [i.name for i in model.graph.input if i.name not in self.values]

    def const(self, name: str) -> np.ndarray:
        """The constant behind ``name``, looking through Identity/Unsqueeze/Reshape/Squeeze/Cast."""
        seen = 0
        while name not in self.values:
            node = self.producer.get(name)
            if node is None or node.op_type not in ("Identity", "Unsqueeze", "Reshape", "Squeeze", "Cast",
                                                    "Flatten") or seen > 8:
                raise UserError(f"ONNX import: tensor '{name}' is not a constant")
            name, seen = node.input[0], seen + 1
        return np.asarray(self.values[name], dtype=np.float32)

    def is_const(self, name: str) -> bool:
        try:
            self.const(name)
            return True
        except UserError:
            return False

    def sole_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def dynamic_input(self, node) -> str:
        for name in node.input:
            if name and not self.is_const(name):
                return name
        raise UserError(f"ONNX import: node {node.name} has no data input")


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _input_affine(g: _Graph, first_conv) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``a, b`` such that the first Conv sees ``a * graph_input + b`` (Sub/Mul/Div/Add at the input)."""
    a, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    chain = []
    name = first_conv.input[0]
    while name not in g.input_names:
        node = g.producer.get(name)
        if node is None:
            raise UserError("ONNX import: cannot trace the input of the first convolution")
        chain.append(node)
        name = g.dynamic_input(node)
    for node in reversed(chain):
        consts = [g.const(n).reshape(-1) for n in node.input if n and g.is_const(n)]
        c = consts[0] if consts else np.zeros(1, np.float32)
        c = np.broadcast_to(c, (3,)) if c.size in (1, 3) else None
        if node.op_type in ("Identity", "Cast"):
            continue
        if c is None:
            raise UserError(f"ONNX import: unsupported input normalisation node {node.op_type}")
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
            raise UserError(f"ONNX import: unsupported op {node.op_type} before the first convolution")
    return a.astype(np.float32), b.astype(np.float32)


@dataclass
class _ConvBN:
    conv: object
    bn: object | None  # the BatchNormalization right after the Conv (None when folded into the Conv's bias)


def _conv_bn(g: _Graph, conv) -> _ConvBN:
    return _ConvBN(conv, g.sole_consumer(conv.output[0], "BatchNormalization"))


def _walk_back_to(g: _Graph, name: str, op_type: str, through=("Flatten", "Reshape", "Identity", "Dropout")):
    node = g.producer.get(name)
    while node is not None and node.op_type in through:
        node = g.producer.get(g.dynamic_input(node))
    return node if node is not None and node.op_type == op_type else None


def _walk_forward_to(g: _Graph, name: str, op_type: str, through=("Unsqueeze", "Squeeze", "Reshape", "Identity")):
    node = g.sole_consumer(name, op_type)
    while node is None:
        users = g.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type not in through:
            return None
        name = users[0].output[0]
        node = g.sole_consumer(name, op_type)
    return node


def _set_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d, g: _Graph, cb: _ConvBN, in_scale: np.ndarray | None = None):
    w = g.const(cb.conv.input[1])
    if tuple(w.shape) != tuple(conv.weight.shape):
        raise UserError(f"ONNX import: conv {cb.conv.name} weight {tuple(w.shape)} vs model {tuple(conv.weight.shape)}")
    if in_scale is not None:
        w = w * in_scale.reshape(1, -1, 1, 1)
    conv.weight.data.copy_(torch.tensor(np.ascontiguousarray(w)))
    if cb.bn is not None:
        _set_bn(bn, g, cb.bn)
        if len(cb.conv.input) > 2 and cb.conv.input[2]:  # a conv bias before a BN: fold it into the BN's mean
            bn.running_mean.data.sub_(torch.tensor(g.const(cb.conv.input[2]).reshape(-1)))
    else:  # BN folded into the conv: identity BN carrying the conv's bias
        bias = g.const(cb.conv.input[2]).reshape(-1) if len(cb.conv.input) > 2 and cb.conv.input[2] else \
            np.zeros(conv.out_channels, np.float32)
        _identity_bn(bn, bias)


def _identity_bn(bn: nn.modules.batchnorm._BatchNorm, bias: np.ndarray) -> None:
    bn.weight.data.fill_(1.0)
    bn.bias.data.copy_(torch.tensor(np.ascontiguousarray(bias, dtype=np.float32)))
    bn.running_mean.data.zero_()
    bn.running_var.data.fill_(1.0 - bn.eps)


def _set_bn(bn: nn.modules.batchnorm._BatchNorm, g: _Graph, node) -> None:
    scale, bias, mean, var = (g.const(n).reshape(-1) for n in node.input[1:5])
    if scale.size != bn.num_features:
        raise UserError(f"ONNX import: BatchNormalization {node.name} has {scale.size} channels, model "
                        f"{bn.num_features}")
    eps = float(_attr(node, "epsilon", 1e-5))
    for t, v in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var + eps - bn.eps)):
        t.data.copy_(torch.tensor(np.ascontiguousarray(v)))


def _set_prelu(prelu: nn.PReLU, g: _Graph, node) -> None:
    slope = g.const(node.input[1]).reshape(-1)
    if slope.size != prelu.weight.numel():
        raise UserError(f"ONNX import: PRelu {node.name} has {slope.size} slopes, model {prelu.weight.numel()}")
    prelu.weight.data.copy_(torch.tensor(np.ascontiguousarray(slope)))


def import_iresnet_onnx(path: str | os.PathLike, verify: bool = True) -> IResNet:
    """Rebuild an iresnet exported from torch (e.g. insightface ``w600k_r50.onnx``) as our :class:`IResNet`.

    Walks the graph by structure, not names: the 3x3 Convs in order are the stem and each block's conv1/conv2
    (a stride-2 conv2 opens a stage), 1x1 Convs are downsamples; a BatchNormalization directly after a Conv is
    that Conv's BN, or, when the exporter folded it into the Conv, an identity BN carries the Conv's bias.
    Input Sub/Mul/Div normalisation is folded into the stem conv so that the returned model expects our
    ``(x/255-0.5)/0.5`` input and reproduces onnxruntime fed with insightface's normalisation.
    With ``verify`` both run on a few random crops and must agree (cosine >= 0.9999), else :class:`UserError`.
    """
    path = Path(path)
    model = _load_onnx(path)
    try:
        net = _import_iresnet(path, model)
    except UserError as err:
        text = str(err)
        raise UserError(text if "iresnet" in text else f"{path}: not an importable iresnet ONNX ({text})") from None
    if verify:
        cos = verify_against_onnxruntime(net, path)
        if cos < 0.9999:
            raise UserError(f"{path}: imported iresnet disagrees with onnxruntime (worst cosine {cos:.5f}); the graph "
                            "has a layout this importer does not know")
    return net


def verify_against_onnxruntime(net: nn.Module, path: str | os.PathLike, n: int = 2) -> float:
    """Worst cosine between ``net`` and onnxruntime on ``n`` random 112x112 crops."""
    from agebias.models.embedder import TorchEmbedder

    faces = np.random.default_rng(0).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)
    a = OnnxEmbedder(path, device="cpu", batch_size=n).embed(faces)
    b = TorchEmbedder(net, device="cpu", batch_size=n).embed(faces)
    return float((a * b).sum(1).min())


def _import_iresnet(path: Path, model) -> IResNet:
    g = _Graph(model)
    convs = [n for n in g.nodes if n.op_type == "Conv"]
    if not convs:
        raise UserError(f"{path}: no Conv nodes; not an iresnet ONNX")
    k3 = [c for c in convs if list(_attr(c, "kernel_shape", g.const(c.input[1]).shape[2:])) == [3, 3]]
    k1 = [c for c in convs if list(_attr(c, "kernel_shape", g.const(c.input[1]).shape[2:])) == [1, 1]]
    prelus = [n for n in g.nodes if n.op_type == "PRelu"]
    gemms = [n for n in g.nodes if n.op_type in ("Gemm", "MatMul")]
    if len(k3) + len(k1) != len(convs) or len(k3) < 3 or (len(k3) - 1) % 2 or not gemms:
        raise UserError(f"{path}: graph does not look like an iresnet ({len(k3)} 3x3 convs, {len(k1)} 1x1 convs, "
                        f"{len(gemms)} Gemm/MatMul)")
    stem, pairs = k3[0], [(k3[i], k3[i + 1]) for i in range(1, len(k3), 2)]
    depths: list[int] = []
    widths: list[int] = []
    for c1, c2 in pairs:
        if list(_attr(c2, "strides", [1, 1])) == [2, 2] or not depths:
            depths.append(0)
            widths.append(int(g.const(c1.input[1]).shape[0]))
        depths[-1] += 1
    if len(depths) != 4 or len(k1) != 4 or len(prelus) != 1 + len(pairs):
        raise UserError(f"{path}: graph does not look like an iresnet (stages {depths}, {len(k1)} downsamples, "
                        f"{len(prelus)} PRelu)")
    gemm = gemms[-1]
    fc_w = g.const(gemm.input[1])
    if gemm.op_type == "Gemm":
        if not int(_attr(gemm, "transB", 0)):
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
    mean, std = _onnx_normalisation(path, model)
    a, b = _input_affine(g, stem)
    alpha = a * 127.5 / std
    beta = a * (127.5 - mean) / std + b
    if np.abs(beta).max() > 1e-3 * max(1.0, float(np.abs(alpha).max())):
        raise UserError(f"{path}: input normalisation with a per-channel offset {beta.tolist()} cannot be folded "
                        "into the torch iresnet")

    with torch.no_grad():
        _set_conv(net.conv1, net.bn1, g, _conv_bn(g, stem), in_scale=alpha)
        _set_prelu(net.prelu, g, prelus[0])
        blocks = [blk for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for blk in layer]
        for i, (blk, (c1, c2)) in enumerate(zip(blocks, pairs)):
            pre = _walk_back_to(g, c1.input[0], "BatchNormalization", through=("Identity",))
            if pre is None:
                raise UserError(f"{path}: block {i}: no BatchNormalization before conv {c1.name}")
            _set_bn(blk.bn1, g, pre)
            _set_conv(blk.conv1, blk.bn2, g, _conv_bn(g, c1))
            _set_prelu(blk.prelu, g, prelus[1 + i])
            _set_conv(blk.conv2, blk.bn3, g, _conv_bn(g, c2))
        downsampled = [blocks[sum(depths[:s])] for s in range(4)]
        for blk, conv in zip(downsampled, k1):
            _set_conv(blk.downsample[0], blk.downsample[1], g, _conv_bn(g, conv))
        tail = _walk_back_to(g, gemm.input[0], "BatchNormalization")
        if tail is None:
            raise UserError(f"{path}: no BatchNormalization before the final fully connected layer")
        _set_bn(net.bn2, g, tail)
        if tuple(fc_w.shape) != tuple(net.fc.weight.shape):
            raise UserError(f"{path}: fc weight {tuple(fc_w.shape)} vs model {tuple(net.fc.weight.shape)}")
        net.fc.weight.copy_(torch.tensor(np.ascontiguousarray(fc_w)))
        feat = _walk_forward_to(g, fc_out, "BatchNormalization")
        if feat is not None:
            net.fc.bias.copy_(torch.tensor(fc_b) if fc_b is not None else torch.zeros(num_features))
            _set_bn(net.features, g, feat)
        else:  # features BN folded into the Gemm: identity features BN
            net.fc.bias.zero_()
            _identity_bn(net.features, fc_b if fc_b is not None else np.zeros(num_features, np.float32))
    return net.eval()
