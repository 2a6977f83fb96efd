"""bf16 training on CPU: trainable weights kept in bf16 between steps, updated by one fused SGD pass.

Under autocast each step casts every fp32 master weight to bf16 for the forward pass and casts its bf16 gradient
back into a new fp32 tensor, then the optimizer reads and writes the masters again. For iresnet50's layer 4 + fc
(27M parameters) that is ~75 ms a step on 2 cores, against ~14 ms for one pass that does it all.

Here each covered weight ``W`` (the fp32 ``nn.Parameter``; the optimizer, state dict and checkpoints keep it) gets
a bf16 copy ``S`` = round-to-nearest-even(``W``), exactly the tensor autocast would make. The module's forward
uses ``S`` where autocast runs in bf16 on CPU, so backward leaves dL/dS (bf16) in ``S.grad`` and ``W.grad`` stays
None. :meth:`Bf16Weights.step`, called between backward and ``optimizer.step()`` (which skips ``W``: it has no
grad), then updates ``W``, its momentum buffer (``optimizer.state[W]["momentum_buffer"]``, where torch's SGD keeps
it) and ``S`` in one compiled pass (numba). The arithmetic is torch's SGD in fp32 (weight decay, momentum,
dampening, nesterov, maximize; the first step's buffer is the gradient), on the same bf16 gradient values
autocast's cast would give. ``W`` changed elsewhere (a checkpoint loaded, in-place edits) is noticed by its
version counter and ``S`` is made again.

Covered: ``nn.Conv2d`` and ``nn.Linear`` weights of the backbone that train, SGD, one process, CPU, bf16, numba
installed. Elsewhere (AdamW, DDP, fp32, other devices, ``AGEBIAS_NO_JIT=1`` or ``AGEBIAS_NO_BF16_WEIGHTS=1``)
nothing changes.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

@functools.cache
def _kernel():
    """The compiled fused SGD pass, or None (numba missing or disabled)."""
    if os.environ.get("AGEBIAS_NO_JIT", "") not in ("", "0"):
        return None
    try:
        from numba import njit, prange, types
        from numba.extending import intrinsic
    except ImportError:
        return None

    @intrinsic
    def as_f32(typingctx, bits):  # pragma: no cover - compiled
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float32))
        return types.float32(types.uint32), codegen

    @intrinsic
    def as_u32(typingctx, value):  # pragma: no cover - compiled
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.uint32))
        return types.uint32(types.float32), codegen

    @njit(parallel=True, cache=True)
    def sgd_bf16(w, g, buf, s, lr, momentum, dampening, weight_decay, nesterov, maximize, first):  # pragma: no cover
        """In place, element by element (fp32; ``g`` and ``s`` are bf16 bit patterns): d = ±g + wd * w; with
        momentum: buf = d on the first step, else momentum * buf + (1 - dampening) * d, and d = buf (nesterov:
        d + momentum * buf); w -= lr * d; s = bf16(w), rounded to nearest even (NaN stays NaN)."""
        one = np.float32(1.0)
        for i in prange(w.size):
            wi = w[i]
            d = as_f32(np.uint32(g[i]) << np.uint32(16))
            if maximize:
                d = -d
            if weight_decay != 0:
                d = d + weight_decay * wi
            if momentum != 0:
                b = d if first else momentum * buf[i] + (one - dampening) * d
                buf[i] = b
                d = d + momentum * b if nesterov else b
            wi = wi - lr * d
            w[i] = wi
            u = as_u32(wi)
            if wi != wi:
                s[i] = np.uint16(0x7FC0)
            else:
                s[i] = np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))

    return sgd_bf16


def _flat(t: torch.Tensor, as_dtype: np.dtype) -> np.ndarray:
    """The elements of dense ``t`` in memory order, as a writable numpy view (bf16 as its uint16 bit patterns)."""
    flat = t.detach().as_strided((t.numel(),), (1,), t.storage_offset())
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy().view(as_dtype)


class _UsesBf16Weight:
    """Mixin for ``nn.Conv2d`` / ``nn.Linear``: where autocast runs in bf16 on CPU, the forward uses the bf16 copy
    of ``self.weight`` (made again when the weight's version moved) instead of autocast's per-call cast."""

    _bf16_weight: torch.Tensor
    _bf16_version: int

    def _weight_for(self, weight: torch.Tensor) -> torch.Tensor:
        if (weight is not self.weight or weight.device.type != "cpu" or not torch.is_autocast_enabled("cpu")
                or torch.get_autocast_dtype("cpu") != torch.bfloat16):
            return weight  # e.g. a functional call's own tensor, fp32 inference
        if weight._version != self._bf16_version:
            self.refresh_bf16_weight()
        return self._bf16_weight

    def refresh_bf16_weight(self) -> None:
        with torch.no_grad():
            self._bf16_weight.copy_(self.weight)
        self._bf16_version = self.weight._version


class _Bf16Conv2d(_UsesBf16Weight):
    def _conv_forward(self, input, weight, bias):  # noqa: A002 - nn.Conv2d's signature
        return super()._conv_forward(input, self._weight_for(weight), bias)


class _Bf16Linear(_UsesBf16Weight):
    def forward(self, input):  # noqa: A002 - nn.Linear's signature
        return F.linear(input, self._weight_for(self.weight), self.bias)


@functools.cache
def _subclass(cls: type) -> type:
    mixin = _Bf16Conv2d if issubclass(cls, nn.Conv2d) else _Bf16Linear
    return type(f"Bf16Weight{cls.__name__}", (mixin, cls), {})


def wanted(precision: str, device: torch.device | str, optimizer: torch.optim.Optimizer, world_size: int) -> bool:
    """bf16 on CPU, SGD, one process, the kernel available and ``AGEBIAS_NO_BF16_WEIGHTS`` unset."""
    off = os.environ.get("AGEBIAS_NO_BF16_WEIGHTS", "") not in ("", "0")
    return (precision == "bf16" and torch.device(device).type == "cpu" and type(optimizer) is torch.optim.SGD
            and world_size == 1 and not off and _kernel() is not None)


class Bf16Weights:
    """The bf16 copies of ``module``'s trainable conv/linear weights that ``optimizer`` owns (see the module
    notes); ``step`` updates them with their masters."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.modules: list[nn.Module] = []
        for m in module.modules():
            if _plain_forward(m):
                w = m.weight
                if w.requires_grad and w.dtype == torch.float32 and w.device.type == "cpu" and id(w) in owned:
                    m.__class__ = _subclass(type(m))
                    m._bf16_weight = torch.empty_like(w, dtype=torch.bfloat16).requires_grad_(True)
                    m.refresh_bf16_weight()
                    self.modules.append(m)
        self.by_param = {id(m.weight): m for m in self.modules}

    def __len__(self) -> int:
        return len(self.modules)

    def zero_grad(self) -> None:
        """Clear the bf16 copies' gradients (as ``optimizer.zero_grad(set_to_none=True)`` does the masters')."""
        for m in self.modules:
            m._bf16_weight.grad = None

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The SGD update of every covered weight that has a gradient (as ``optimizer.step()`` would make it from
        that gradient in fp32), its bf16 copy made from the result; the copies' gradients are cleared."""
        kernel = _kernel()
        for group in optimizer.param_groups:
            for w in group["params"]:
                m = self.by_param.get(id(w))
                if m is None or m._bf16_weight.grad is None:
                    continue
                s = m._bf16_weight
                g = _like(s.grad, w, torch.bfloat16)
                momentum = float(group["momentum"])
                state = optimizer.state[w]
                buf = state.get("momentum_buffer")
                first = buf is None
                if momentum != 0:
                    buf = torch.empty_like(w) if first else _like(buf, w, torch.float32)
                    state["momentum_buffer"] = buf
                else:
                    buf = w  # not read or written without momentum
                kernel(_flat(w, np.float32), _flat(g, np.uint16), _flat(buf, np.float32), _flat(s, np.uint16),
                       np.float32(_number(group["lr"])), np.float32(momentum), np.float32(group["dampening"]),
                       np.float32(group["weight_decay"]), bool(group["nesterov"]), bool(group.get("maximize")),
                       first)
                s.grad = None
                m._bf16_version = w._version


def _number(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def _like(t: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as ``dtype`` with dense ``ref``'s shape and strides (``t`` itself where it has them already)."""
    if t.dtype == dtype and t.stride() == ref.stride():
        return t
    return torch.empty_like(ref, dtype=dtype).copy_(t)


def _plain_forward(m: nn.Module) -> bool:
    """A conv/linear whose forward reads ``self.weight`` as ``nn.Conv2d`` / ``nn.Linear`` do (subclasses that
    change only ``_conv_forward`` included), not converted yet."""
    if isinstance(m, _UsesBf16Weight):
        return False
    if isinstance(m, nn.Conv2d):
        return type(m).forward is nn.Conv2d.forward
    return isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward


def enable_for(module: nn.Module, optimizer: torch.optim.Optimizer, precision: str, device: torch.device | str,
               world_size: int = 1) -> Bf16Weights | None:
    """:class:`Bf16Weights` of ``module`` where runs like this want them (:func:`wanted`) and some weight is
    covered; else None (training as autocast alone runs it)."""
    if not wanted(precision, device, optimizer, world_size):
        return None
    weights = Bf16Weights(module, optimizer)
    return weights if len(weights) else None
