"""bf16 training on CPU: trainable weights kept in bf16 between steps, updated by one fused SGD or Adam(W) pass.

Under autocast each step casts every fp32 master weight to bf16 for the forward pass and casts its bf16 gradient
back into a new fp32 tensor, then the optimizer reads and writes the masters again. For iresnet50's layer 4 + fc
(27M parameters) that is ~75 ms a step on 2 cores, against ~14 ms for one pass that does it all.

Here each covered weight ``W`` (the fp32 ``nn.Parameter``; the optimizer, state dict and checkpoints keep it) gets
a bf16 copy ``S`` = round-to-nearest-even(``W``), exactly the tensor autocast would make. The module's forward
uses ``S`` where autocast runs in bf16 on CPU, so backward leaves dL/dS (bf16) in ``S.grad`` and ``W.grad`` stays
None. :meth:`Bf16Weights.step`, called between backward and ``optimizer.step()`` (which skips ``W``: it has no
grad), then updates ``W``, its optimizer state and ``S`` in one compiled pass (numba,
:mod:`agebias.finetune.bf16_sgd_kernel`, :mod:`agebias.finetune.bf16_adam_kernel`). The state lives where torch's
optimizer keeps it (``optimizer.state[W]``: SGD's ``momentum_buffer``; Adam's ``step``, ``exp_avg``,
``exp_avg_sq``), so checkpoints, resumption and torch's own step read the same values. The arithmetic is torch's
in fp32 (SGD: weight decay, momentum, dampening, nesterov, maximize, the first step's buffer the gradient; Adam and
AdamW: betas, eps, weight decay L2 or decoupled, maximize, bias corrections), on the same bf16 gradient values
autocast's cast would give, so results agree with autocast + torch's step to a few fp32 ulps per step (the Adam
pass rounds its scalars as torch's fused Adam does; the single-tensor one can differ by an ulp of the update).

A ``W`` that also got an fp32 gradient (used outside its module too), or whose parameter group asks for what the
kernels do not do (amsgrad, capturable, differentiable), is left to the optimizer's own step, and ``S`` is made
again before its next use (torch's fused steps change ``W`` without a trace). ``W`` changed through torch elsewhere
(a checkpoint loaded, in-place edits, ``.to()``) is noticed by its version counter and memory, and ``S`` is made
again; writes torch cannot see (through a ``.numpy()`` view) are not noticed.

Covered: ``nn.Conv2d`` and ``nn.Linear`` weights of the backbone that train and belong to one module, SGD, Adam or
AdamW, one process, CPU, bf16, numba installed. Elsewhere (other optimizers, DDP, fp32, other devices,
``AGEBIAS_NO_JIT=1`` or ``AGEBIAS_NO_BF16_WEIGHTS=1``) nothing changes.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agebias.finetune.jit_kernels import load_kernel

@functools.cache
def _kernel():
    """The compiled fused SGD pass (:mod:`agebias.finetune.bf16_sgd_kernel`), or None (numba missing, disabled, or
    unable to build it here)."""
    return load_kernel("agebias.finetune.bf16_sgd_kernel", "sgd_bf16", "the compiled bf16 SGD step",
                       "bf16 training casts weights each step instead")


@functools.cache
def _adam_kernel():
    """The compiled fused Adam/AdamW pass (:mod:`agebias.finetune.bf16_adam_kernel`), or None (as :func:`_kernel`)."""
    return load_kernel("agebias.finetune.bf16_adam_kernel", "adam_bf16", "the compiled bf16 Adam step",
                       "bf16 training casts weights each step instead")


def _flat(t: torch.Tensor, as_dtype: np.dtype) -> np.ndarray:
    """The elements of dense ``t`` in memory order, as a writable numpy view (bf16 as its uint16 bit patterns)."""
    flat = t.detach().as_strided((t.numel(),), (1,), t.storage_offset())
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy().view(as_dtype)


class _UsesBf16Weight:
    """Mixin for ``nn.Conv2d`` / ``nn.Linear``: where autocast runs in bf16 on CPU, the forward uses the bf16 copy
    of the master weight (made again when the master moved) instead of autocast's per-call cast."""

    _bf16_master: nn.Parameter
    _bf16_weight: torch.Tensor
    _bf16_seen: tuple[int, int]

    def _weight_for(self, weight: torch.Tensor) -> torch.Tensor:
        if (weight is not self._bf16_master or weight.device.type != "cpu" or not torch.is_autocast_enabled("cpu")
                or torch.get_autocast_dtype("cpu") != torch.bfloat16):
            return weight  # e.g. a functional call's own tensor, fp32 inference
        if _seen(weight) != self._bf16_seen:
            self.refresh_bf16_weight()
        return self._bf16_weight

    def refresh_bf16_weight(self) -> None:
        """The bf16 copy made again from the master (with the master's layout)."""
        w = self._bf16_master
        with torch.no_grad():
            if self._bf16_weight.shape != w.shape or self._bf16_weight.stride() != w.stride():
                self._bf16_weight = torch.empty_like(w, dtype=torch.bfloat16).requires_grad_(True)
            self._bf16_weight.copy_(w)
        self._bf16_seen = _seen(w)


def _seen(w: torch.Tensor) -> tuple[int, int]:
    """What changes when ``w``'s values may have changed through torch: its version and its memory (torch's fused
    optimizer steps change neither: :meth:`Bf16Weights.step` marks a master it leaves to them as :data:`_STALE`)."""
    return w._version, w.data_ptr()


_STALE = (-1, -1)  # never a master's (version, memory): its bf16 copy is made again before the next use


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


def _kernel_for(optimizer: torch.optim.Optimizer):
    """The compiled pass for ``optimizer``'s update rule, or None (another optimizer, or no kernel here)."""
    rule = _RULES.get(type(optimizer))
    return rule[1]() if rule else None


def wanted(precision: str, device: torch.device | str, optimizer: torch.optim.Optimizer, world_size: int) -> bool:
    """bf16 on CPU, SGD, Adam or AdamW, one process, the kernel available and ``AGEBIAS_NO_BF16_WEIGHTS`` unset."""
    off = os.environ.get("AGEBIAS_NO_BF16_WEIGHTS", "") not in ("", "0")
    return (precision == "bf16" and torch.device(device).type == "cpu" and world_size == 1 and not off
            and _kernel_for(optimizer) is not None)


class Bf16Weights:
    """The bf16 copies of ``module``'s trainable conv/linear weights that ``optimizer`` owns (see the module
    notes); ``step`` updates them with their masters."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
        candidates = [m for m in module.modules() if _plain_forward(m)]
        uses: dict[int, int] = {}
        for m in candidates:
            uses[id(m.weight)] = uses.get(id(m.weight), 0) + 1
        self.modules: list[nn.Module] = []
        for m in candidates:
            w = m.weight
            if (w.requires_grad and w.dtype == torch.float32 and w.device.type == "cpu" and id(w) in owned
                    and uses[id(w)] == 1 and _dense(w)):  # a weight two modules share keeps autocast's casts
                m.__class__ = _subclass(type(m))
                object.__setattr__(m, "_bf16_master", w)  # not registered: parameters and state dict unchanged
                m._bf16_weight = torch.empty_like(w, dtype=torch.bfloat16).requires_grad_(True)
                m.refresh_bf16_weight()
                self.modules.append(m)
        self.by_param = {id(m._bf16_master): m for m in self.modules}

    def __len__(self) -> int:
        return len(self.modules)

    def zero_grad(self) -> None:
        """Clear the bf16 copies' gradients (as ``optimizer.zero_grad(set_to_none=True)`` does the masters')."""
        for m in self.modules:
            m._bf16_weight.grad = None

    @torch.no_grad()
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The update of every covered weight that has a gradient (as ``optimizer.step()`` would make it from that
        gradient in fp32), its bf16 copy made from the result; the copies' gradients are cleared."""
        update = _RULES.get(type(optimizer), (None,))[0]
        for group in optimizer.param_groups:
            for w in group["params"]:
                m = self.by_param.get(id(w))
                if m is None:
                    continue
                s = m._bf16_weight
                if s.grad is None:
                    if w.grad is not None:  # used only directly this step: torch's step updates it
                        m._bf16_seen = _STALE
                    continue
                if update is None or w.grad is not None or not _fits(w, s) or not _kernel_takes(group):
                    # another optimizer, the master also used directly, changed type or layout, or a group that
                    # asks for more than the kernel does: torch's step takes this one, with the gradient in the
                    # master's layout (torch's fused CPU SGD and Adam pair elements by memory order)
                    grad = _like(s.grad, w, torch.float32)
                    w.grad = grad if w.grad is None else w.grad + grad
                    s.grad = None
                    m._bf16_seen = _STALE
                    continue
                update(optimizer, group, w, _like(s.grad, w, torch.bfloat16), s)
                s.grad = None
                m._bf16_seen = _seen(w)  # numpy's writes bypass torch's version counter: s matches w


def _kernel_takes(group: dict) -> bool:
    """Whether the compiled passes do what ``group`` asks (not amsgrad, capturable or differentiable Adam)."""
    return not any(group.get(key) for key in ("amsgrad", "capturable", "differentiable"))


def _sgd_update(optimizer: torch.optim.SGD, group: dict, w: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> None:
    """torch's SGD step of ``w`` from the bf16 gradient ``g``, its ``momentum_buffer`` where torch keeps it, and
    ``s`` = bf16(w)."""
    momentum = float(group["momentum"])
    state = optimizer.state[w]
    buf = state.get("momentum_buffer")
    first = buf is None
    if momentum != 0:
        buf = torch.empty_like(w) if first else _like(buf, w, torch.float32)
        state["momentum_buffer"] = buf
    else:
        buf = w  # not read or written without momentum
    _kernel()(_flat(w, np.float32), _flat(g, np.uint16), _flat(buf, np.float32), _flat(s, np.uint16),
              np.float32(_number(group["lr"])), np.float32(momentum), np.float32(group["dampening"]),
              np.float32(group["weight_decay"]), bool(group["nesterov"]), bool(group.get("maximize")), first)


def _adam_update(optimizer: torch.optim.Adam, group: dict, w: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> None:
    """torch's Adam or AdamW step (``group["decoupled_weight_decay"]``) of ``w`` from the bf16 gradient ``g``, its
    ``step``, ``exp_avg`` and ``exp_avg_sq`` where torch keeps them, and ``s`` = bf16(w)."""
    state = optimizer.state[w]
    if "step" not in state:  # as torch's Adam starts a parameter's state
        state["step"] = torch.zeros((), dtype=torch.float32, device=w.device)
        state["exp_avg"] = torch.zeros_like(w, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(w, memory_format=torch.preserve_format)
    state["exp_avg"] = exp_avg = _like(state["exp_avg"], w, torch.float32)
    state["exp_avg_sq"] = exp_avg_sq = _like(state["exp_avg_sq"], w, torch.float32)
    state["step"] += 1
    step = _number(state["step"])
    lr, eps, weight_decay = _number(group["lr"]), float(group["eps"]), float(group["weight_decay"])
    beta1, beta2 = (_number(b) for b in group["betas"])
    decoupled = bool(group.get("decoupled_weight_decay", type(optimizer) is torch.optim.AdamW))
    _adam_kernel()(_flat(w, np.float32), _flat(g, np.uint16), _flat(exp_avg, np.float32),
                   _flat(exp_avg_sq, np.float32), _flat(s, np.uint16),
                   np.float32(1 - lr * weight_decay if decoupled else 1.0),
                   np.float32(0.0 if decoupled else weight_decay), np.float32(1 - beta1), np.float32(beta2),
                   np.float32(1 - beta2), np.float32(lr / (1 - beta1 ** step)), np.float32((1 - beta2 ** step) ** 0.5),
                   np.float32(eps), bool(group.get("maximize")))


# optimizer type -> (its update, the loader of the compiled pass that update calls)
_RULES = {torch.optim.SGD: (_sgd_update, _kernel), torch.optim.Adam: (_adam_update, _adam_kernel),
          torch.optim.AdamW: (_adam_update, _adam_kernel)}


def _number(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def _like(t: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as ``dtype`` with dense ``ref``'s shape and strides (``t`` itself where it has them already)."""
    if t.dtype == dtype and t.stride() == ref.stride():
        return t
    return torch.empty_like(ref, dtype=dtype).copy_(t)


def _dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _fits(w: torch.Tensor, s: torch.Tensor) -> bool:
    """Whether the kernel can update ``w`` and its copy ``s`` element by element in memory order."""
    return (w.dtype == torch.float32 and s.dtype == torch.bfloat16 and w.shape == s.shape and w.stride() == s.stride()
            and _dense(w))


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
