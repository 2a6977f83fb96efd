"""Exact dequantisation of an ONNX graph's quantised weights (``DequantizeLinear`` on constant inputs).

ONNX ``DequantizeLinear`` (opset 21): ``y = (x - x_zero_point) * x_scale`` with ``x_scale`` and ``x_zero_point`` of one
shape that sets the granularity: a scalar (or one-element vector) for per-tensor, a 1-D tensor of length
``x.shape[axis]`` for per-axis, or, with the ``block_size`` attribute > 0, a tensor of ``x``'s rank whose ``axis``
dimension is ``ceil(x.shape[axis] / block_size)`` (blocked: element ``i`` along ``axis`` uses scale ``i //
block_size``). ``axis`` defaults to 1 and may be negative; the zero point defaults to 0. The output has the scale's
element type. The difference ``x - zero_point`` is taken in integers and multiplied by the scale once, in the
scale's precision, as onnxruntime does, so the float weights equal the ones onnxruntime computes bit for bit.
"""

from __future__ import annotations

import copy

import numpy as np

from agebias.errors import ModelError
from agebias.models.onnx_file import node_attr


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 1,
                      block_size: int = 0) -> np.ndarray:
    """``(x - zero_point) * scale`` with the scale's granularity read from its shape (see the module notes)."""
    x = np.asarray(x)
    scale = np.asarray(scale)
    zp = np.zeros(scale.shape, np.int64) if zero_point is None else np.asarray(zero_point).astype(np.int64)
    if zp.shape != scale.shape:
        raise ModelError(f"DequantizeLinear: zero point shape {zp.shape} differs from scale shape {scale.shape}")
    diff_dtype = np.float64 if scale.dtype == np.float64 else np.float32
    if block_size == 0 and scale.size == 1:  # per tensor
        diff = x.astype(np.int64) - zp.reshape(())
        return (diff.astype(diff_dtype) * scale.reshape(()).astype(diff_dtype)).astype(scale.dtype)
    if x.ndim == 0:
        raise ModelError("DequantizeLinear: a scalar input needs a scalar scale")
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise ModelError(f"DequantizeLinear: axis {axis} out of range for a rank-{x.ndim} input")
    if block_size > 0:
        expected = list(x.shape)
        expected[ax] = -(-x.shape[ax] // block_size)
        if list(scale.shape) != expected:
            raise ModelError(f"DequantizeLinear: blocked scale shape {scale.shape} for input {x.shape}, axis {ax}, "
                             f"block size {block_size}; expected {tuple(expected)}")
        index = np.arange(x.shape[ax]) // block_size
        scale_full, zp_full = np.take(scale, index, axis=ax), np.take(zp, index, axis=ax)
    else:
        if scale.ndim != 1 or scale.size != x.shape[ax]:
            raise ModelError(f"DequantizeLinear: per-axis scale of shape {scale.shape} for input {x.shape} along "
                             f"axis {ax}")
        shape = [1] * x.ndim
        shape[ax] = scale.size
        scale_full, zp_full = scale.reshape(shape), zp.reshape(shape)
    diff = x.astype(np.int64) - zp_full
    return (diff.astype(diff_dtype) * scale_full.astype(diff_dtype)).astype(scale.dtype)


def dequantized_constants(model, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output name -> float array for every ``DequantizeLinear`` node of ``model`` whose inputs are all in
    ``values`` (the graph's constants)."""
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        inputs = [name for name in node.input if name]
        if not all(name in values for name in inputs):
            continue
        x, scale = values[inputs[0]], values[inputs[1]]
        zp = values[inputs[2]] if len(inputs) > 2 else None
        try:
            out[node.output[0]] = dequantize_linear(x, scale, zp, axis=int(node_attr(node, "axis", 1)),
                                                    block_size=int(node_attr(node, "block_size", 0)))
        except ModelError as err:
            raise ModelError(f"node {node.name or node.output[0]}: {err}") from None
    return out


def dequantize_weights(model):
    """A copy of ``model`` where each ``DequantizeLinear`` of constants is replaced by its float result as an
    initializer (the quantised initializers it alone used are dropped): the same function, float weights."""
    from onnx import numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    floats = dequantized_constants(model, values)
    if not floats:
        return model
    done = [n.op_type == "DequantizeLinear" and n.output[0] in floats for n in graph.node]
    used_elsewhere = {i for n, d in zip(graph.node, done, strict=True) if not d for i in n.input}
    dropped = {i for n, d in zip(graph.node, done, strict=True) if d for i in n.input if i and i not in used_elsewhere}
    keep_nodes = [n for n, d in zip(graph.node, done, strict=True) if not d]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    keep_init = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in floats.items())
    keep_inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(keep_inputs)
    return model
