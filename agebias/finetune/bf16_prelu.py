"""bf16 training on CPU: PReLU's backward pass in one compiled pass.

torch's bf16 PReLU backward on CPU writes the slope's gradient for every element before summing it: for iresnet's
layer 4 at batch 25 it took ~16 ms per 14x14 activation and ~3.5 ms per 7x7 one, about 9% of a frozen-prefix
fine-tuning step. :func:`enable_for` turns the trainable ``nn.PReLU`` modules of a model into :class:`Bf16PReLU`,
whose backward runs :mod:`agebias.finetune.bf16_prelu_kernel` instead (~1 ms and ~0.3 ms on 2 cores):

- the forward pass is torch's (``torch.prelu`` on the bf16 input with the slope cast to bf16, as autocast does);
- the input gradient is bit for bit torch's: grad where x > 0, else bf16(grad * slope);
- the slope's gradient is summed in float32 (torch sums bf16 products: its error is larger) and given to the fp32
  slope as it is.

Used where the module trains under CPU bf16 autocast with grad enabled and the input is channels-last with one slope
per channel (as in every iresnet block); anything else runs ``nn.PReLU``'s own forward. Needs numba (``pip install
'agebias[fast]'``); ``AGEBIAS_NO_BF16_PRELU=1`` or ``AGEBIAS_NO_JIT=1`` keeps torch's. Parameters and state-dict
keys are unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from agebias.finetune.jit_kernels import load_kernel


@functools.cache
def _kernel():
    """The compiled backward pass, or None (numba missing, disabled, or unable to build it here)."""
    return load_kernel("agebias.finetune.bf16_prelu_kernel", "prelu_backward_bf16",
                       "the compiled bf16 PReLU backward", "using torch's")


def _rows(t: torch.Tensor) -> np.ndarray:
    """A channels-last bf16 (N, C, H, W) tensor as a writable (N*H*W, C) uint16 numpy view of its bits (raises
    rather than copy when the memory is not in that order)."""
    nhwc = t.detach().permute(0, 2, 3, 1)
    if not nhwc.is_contiguous():
        raise ValueError("expected a channels-last tensor")
    return nhwc.view(-1, t.shape[1]).view(torch.int16).numpy().view(np.uint16)


@contextlib.contextmanager
def _numba_threads_as_torch():
    """numba's threads for this call limited to torch's (e.g. 1 per process under torchrun); yields the count."""
    import numba

    before = numba.get_num_threads()
    n = max(1, min(before, torch.get_num_threads()))
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(before)


class _Bf16PReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        slope = weight.to(torch.bfloat16)
        ctx.save_for_backward(x, slope)
        ctx.weight_dtype = weight.dtype
        return torch.prelu(x, slope)

    @staticmethod
    @once_differentiable  # a second-order graph raises instead of giving gradients without one
    def backward(ctx, grad):
        x, slope = ctx.saved_tensors
        grad = grad.to(torch.bfloat16).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last
        n, c, h, w = x.shape
        grad_x = torch.empty((n, h, w, c), dtype=torch.bfloat16).permute(0, 3, 1, 2)
        with _numba_threads_as_torch() as threads:
            partial = np.empty((threads, x.shape[1]), np.float32)  # the slope's sums: one row per share
            _kernel()(_rows(x), _rows(grad), slope.float().numpy(), _rows(grad_x), partial)
        grad_w = torch.from_numpy(partial.sum(axis=0, dtype=np.float32)).to(ctx.weight_dtype)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_w


class Bf16PReLU(nn.PReLU):
    """``nn.PReLU`` whose bf16 CPU training steps take their backward pass from the compiled kernel (see the module
    notes); elsewhere it is ``nn.PReLU``."""

    def forward(self, input):  # noqa: A002 - nn.PReLU's signature
        if (input.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and input.dim() == 4 and input.dtype in (torch.float32, torch.bfloat16)
                and self.num_parameters == input.shape[1] and input.shape[1] > 1
                and input.permute(0, 2, 3, 1).is_contiguous() and _kernel() is not None):
            with torch.autocast("cpu", enabled=False):
                return _Bf16PReLUFunction.apply(input.to(torch.bfloat16), self.weight)
        return super().forward(input)


def wanted(precision: str, device: torch.device | str) -> bool:
    """Whether runs in ``precision`` on ``device`` use the compiled PReLU backward: bf16 on CPU with numba, unless
    ``AGEBIAS_NO_BF16_PRELU`` is set."""
    off = os.environ.get("AGEBIAS_NO_BF16_PRELU", "") not in ("", "0")
    return precision == "bf16" and torch.device(device).type == "cpu" and not off and _kernel() is not None


def enable_for(model: nn.Module, precision: str, device: torch.device | str) -> int:
    """Turn ``model``'s trainable ``nn.PReLU`` modules into :class:`Bf16PReLU` (in place) where runs in
    ``precision`` on ``device`` want it (:func:`wanted`); returns how many (0 where not wanted)."""
    if not wanted(precision, device):
        return 0
    count = 0
    for module in model.modules():
        if type(module) is nn.PReLU and module.weight.requires_grad:
            module.__class__ = Bf16PReLU
            count += 1
    return count
