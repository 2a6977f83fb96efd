"""Read a recognition ONNX file, read node attributes and find its input normalisation (shared by the onnxruntime
embedder, the dequantiser and the importers).

Input convention of recognition ONNX files (insightface model zoo): NCHW float32 RGB, ``(x - mean) / std`` where
``mean, std`` are 0, 1 when the graph starts with its own ``Sub``/``Mul`` normalisation nodes and 127.5, 127.5
otherwise (the rule of insightface's ``model_zoo.ArcFaceONNX``, asked directly when insightface is installed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agebias.errors import ModelError


def read_onnx(path: Path):
    """The ``onnx.ModelProto`` in ``path``; :class:`ModelError` for a missing, empty or unreadable file."""
    import onnx

    if not path.exists():
        raise ModelError(f"ONNX model not found: {path}")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        return onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError and other types for bad files
        reason = str(err).splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: not a readable ONNX model ({reason})") from None


def node_attr(node, name: str, default):
    """The value of attribute ``name`` of an ONNX node (``default`` when absent)."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def clean_inputs(model):
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


def input_normalisation(path: Path, model) -> tuple[float, float]:
    """``(mean, std)`` of the graph's input: from insightface's own loader when it is installed, else by the same
    rule (:func:`insightface_input_normalisation`)."""
    try:
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    except Exception:  # noqa: BLE001 - insightface is optional; its import can fail beyond ImportError
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
    except Exception:  # noqa: BLE001 - insightface's internals vary by version; its rule applies here too
        return insightface_input_normalisation(model)


@dataclass
class _Meta:
    name: str
    shape: list = field(default_factory=list)
