"""bf16 training on CPU: convolutions whose weight gradient is one matrix product.

On CPUs with AMX, oneDNN's bf16 weight-gradient convolution is 2-3.5x slower than a bf16 matrix product where the
output is small (iresnet's layer 4 at 7x7: ~35-45 ms against ~10-13 ms per 3x3 512-channel convolution for batch 25,
most of a frozen-prefix fine-tuning step); at 14x14 the two are even, and for the 64-128-channel layers at 28-112
oneDNN is 3-10x faster. :func:`use_gemm_weight_grad` makes a model's trainable convolutions compute that gradient,
where the output has at most :data:`MAX_OUTPUT_POSITIONS` positions, as ``dW = G @ P``: ``G`` is the output
gradient as a (C_out, N*H_out*W_out) matrix, ``P`` the input's patch matrix (im2col; rows: output positions in
(n, y, x) order, columns: (ky, kx, C_in), i.e. channels-last). The forward pass and the input gradient stay
oneDNN's. Both operands are bf16 and the product accumulates in fp32, as oneDNN's kernel does; the result is rounded
to bf16 and, like autocast's, cast to the fp32 master weight's grad.

Only the bf16 autocast path with gradients on CPU changes; inference, fp32 and other devices run ``nn.Conv2d`` as
it is. ``AGEBIAS_NO_GEMM_GRAD=1`` keeps oneDNN's weight gradient everywhere (to compare). Eligible: 2-D
convolutions with groups 1, dilation 1, zero padding given as numbers and no bias (every convolution of iresnet).
The modules stay ``nn.Conv2d`` (a subclass): parameters and state-dict keys unchanged.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

MAX_OUTPUT_POSITIONS = 64  # H_out * W_out up to 8x8: where the product wins at every batch size measured (8-128)


def patch_matrix(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 out_hw: tuple[int, int]) -> torch.Tensor:
    """im2col of ``x`` (N, C, H, W): (N*H_out*W_out, kh*kw*C), columns in (ky, kx, c) order."""
    n, c = x.shape[:2]
    rows = x.permute(0, 2, 3, 1)  # N, H, W, C: a view for channels-last x
    if padding != (0, 0):
        rows = F.pad(rows, (0, 0, padding[1], padding[1], padding[0], padding[0]))
    sn, sh, sw, sc = rows.stride()
    windows = rows.as_strided((n, out_hw[0], out_hw[1], kernel[0], kernel[1], c),
                              (sn, sh * stride[0], sw * stride[1], sh, sw, sc))
    return windows.reshape(n * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * c)


def weight_grad(grad_out: torch.Tensor, x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
    """dL/dW of ``conv2d(x, W, stride, padding)`` from dL/d(output), as (C_out, C_in, kh, kw) (channels-last
    strides)."""
    c_out, h_out, w_out = grad_out.shape[1], grad_out.shape[2], grad_out.shape[3]
    # (C_out, N*H_out*W_out) with rows contiguous: a transposed view would take a matrix product 2x slower
    g = grad_out.transpose(0, 1).reshape(c_out, -1).contiguous()
    grad = g @ patch_matrix(x, kernel, stride, padding, (h_out, w_out))
    return grad.view(c_out, kernel[0], kernel[1], x.shape[1]).permute(0, 3, 1, 2)


class _ConvGemmWeightGrad(torch.autograd.Function):
    """conv2d without bias, dilation 1, groups 1: oneDNN forward and input gradient, GEMM weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.geometry
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad(grad_out, x, tuple(weight.shape[2:]), stride, padding)
        return grad_x, grad_w, None, None


class GemmWeightGradConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose bf16 CPU training steps compute the weight gradient as a matrix product (where
    :func:`covered` holds at the call; elsewhere it is ``nn.Conv2d``)."""

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - nn.Conv2d's signature
        if (input.device.type == "cpu" and torch.is_grad_enabled() and weight.requires_grad
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and input.dim() == 4 and input.dtype in (torch.float32, torch.bfloat16) and covered(self)
                and output_positions(self, input) <= MAX_OUTPUT_POSITIONS):
            with torch.autocast("cpu", enabled=False):
                return _ConvGemmWeightGrad.apply(input.to(torch.bfloat16), weight.to(torch.bfloat16),
                                                 self.stride, self.padding)
        return super()._conv_forward(input, weight, bias)


def output_positions(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """H_out * W_out of ``conv`` (dilation 1, numeric padding) on ``x``."""
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return ((x.shape[-2] + 2 * ph - kh) // sh + 1) * ((x.shape[-1] + 2 * pw - kw) // sw + 1)


def covered(conv: nn.Conv2d) -> bool:
    """Whether the GEMM weight gradient covers ``conv``'s settings (see the module notes)."""
    return (conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros"
            and tuple(conv.dilation) == (1, 1) and not isinstance(conv.padding, str))


def eligible(conv: nn.Module) -> bool:
    """A plain ``nn.Conv2d`` (not a subclass) that :func:`covered` holds for."""
    return type(conv) is nn.Conv2d and covered(conv)


def wanted(precision: str, device: torch.device | str) -> bool:
    """Whether runs in ``precision`` on ``device`` use the GEMM weight gradient: bf16 on CPU, unless
    ``AGEBIAS_NO_GEMM_GRAD`` is set."""
    off = os.environ.get("AGEBIAS_NO_GEMM_GRAD", "") not in ("", "0")
    return precision == "bf16" and torch.device(device).type == "cpu" and not off


def enable_for(model: nn.Module, precision: str, device: torch.device | str) -> int:
    """:func:`use_gemm_weight_grad` on ``model`` where runs in ``precision`` on ``device`` want it (:func:`wanted`);
    returns how many convolutions it converted (0 where not wanted)."""
    return use_gemm_weight_grad(model) if wanted(precision, device) else 0


def use_gemm_weight_grad(model: nn.Module) -> int:
    """Turn ``model``'s eligible convolutions whose weight trains into :class:`GemmWeightGradConv2d` (in place);
    returns how many."""
    count = 0
    for module in model.modules():
        if eligible(module) and module.weight.requires_grad:
            module.__class__ = GemmWeightGradConv2d
            count += 1
    return count
