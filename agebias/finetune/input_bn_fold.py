"""Training the first block after a frozen prefix without that block's input gradient.

An iresnet block starts with ``conv1(bn1(x))``. For the first trainable block, ``x`` is the frozen prefix's output
(the cache) and needs no gradient, yet autograd still computes ``conv1``'s input gradient, only to sum it into
``bn1``'s gradients. For iresnet50's layer 4 at batch 25 that input gradient (14x14, 512 -> 256 channels) costs as
much as ``conv1``'s forward pass. With ``y = gamma * xhat + beta`` per input channel ``c`` (``xhat`` the normalised
input) and ``g`` the gradient of ``conv1``'s output, the same three gradients follow from one weight gradient:

- ``C[o, c, k]`` = the weight gradient of ``conv1`` with ``xhat`` as its input (zero padding as usual);
- ``S[o, k]`` = the sum of ``g[:, o]`` over the output positions whose window tap ``k`` lands inside the input;
- ``dL/dW = gamma_c * C + beta_c * S``, ``dL/dgamma_c = sum_{o,k} W * C``, ``dL/dbeta_c = sum_{o,k} W * S``.

The forward pass is unchanged (torch's batch norm, running statistics updated as ``nn.BatchNorm2d`` does, then the
convolution on the same inputs, in autocast's dtype where autocast runs), so the loss is the same; the gradients
agree with autograd's to rounding (exactly, up to float64 rounding, in float64). Used on CPU where grad is enabled,
the block's input needs no gradient, ``bn1`` is a plain affine ``nn.BatchNorm2d`` with a trainable parameter and
``conv1`` an ``nn.Conv2d`` (or one of agebias's bf16 variants, which change only where the weight comes from and how
its gradient is made) with no bias, groups 1, dilation 1 and numeric zero padding, neither with hooks, outside
tracing, ONNX export, compilation and functorch transforms (see :func:`foldable`); anything else runs the block as it
is. Its backward is not differentiable: a second-order graph through it raises. ``AGEBIAS_NO_BN_FOLD=1`` keeps
autograd's path (to compare).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from agebias.finetune import bf16_weights, gemm_weight_grad
from agebias.models.iresnet import IBasicBlock


def window_sums(grad_out: torch.Tensor, in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``S[o, ky, kx]``: the sum of ``grad_out[:, o]`` over output positions whose tap (ky, kx) reads an input
    position inside ``in_hw`` (not the zero padding); (C_out, kh, kw) in ``dtype``."""
    n, c, h, w = grad_out.shape
    if grad_out.permute(0, 2, 3, 1).is_contiguous():  # channels-last: sum rows of (N, H*W*C), then reorder
        per_position = grad_out.permute(0, 2, 3, 1).reshape(n, -1).sum(0, dtype=dtype).view(h, w, c).permute(2, 0, 1)
    else:
        per_position = grad_out.sum(0, dtype=dtype)  # (C_out, H_out, W_out)
    masks = []
    for axis in range(2):
        taps = torch.arange(kernel[axis]).unsqueeze(1)
        reads = torch.arange(grad_out.shape[2 + axis]).unsqueeze(0) * stride[axis] + taps - padding[axis]
        masks.append(((reads >= 0) & (reads < in_hw[axis])).to(dtype))  # (k, H_out or W_out)
    return torch.einsum("ohw,yh,xw->oyx", per_position, masks[0], masks[1])


def _weight_grad_of(grad_out: torch.Tensor, inputs: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                    padding: tuple[int, int], use_gemm: bool) -> torch.Tensor:
    """dL/dW of ``conv2d(inputs, weight)``: a matrix product where :mod:`gemm_weight_grad` would take one, else
    the convolution backward's weight gradient alone."""
    if use_gemm:
        return gemm_weight_grad.weight_grad(grad_out, inputs, tuple(weight.shape[2:]), stride, padding)
    return torch.ops.aten.convolution_backward(grad_out, inputs, weight, None, list(stride), list(padding), [1, 1],
                                               False, [0, 0], 1, [False, True, False])[1]


class _FoldedBnConv(torch.autograd.Function):
    """``conv2d(batch_norm(x), weight)`` whose backward gives gamma, beta and weight gradients without x's."""

    @staticmethod
    def forward(ctx, x, gamma, beta, weight, running_mean, running_var, training, factor, eps, stride, padding,
                use_gemm):
        y, mean, invstd = torch.native_batch_norm(x, gamma, beta, running_mean, running_var, training, factor, eps)
        if not training:
            mean, invstd = running_mean, torch.rsqrt(running_var + eps)
        shape = (1, -1, 1, 1)
        acc = _accumulation_dtype(weight)
        xhat = ((x.to(acc) - mean.to(acc).view(shape)) * invstd.to(acc).view(shape)).to(weight.dtype)
        ctx.save_for_backward(xhat, weight, gamma, beta)
        ctx.conv = (stride, padding, use_gemm)
        ctx.in_hw = tuple(x.shape[2:])
        return F.conv2d(y.to(weight.dtype), weight, None, stride, padding)

    @staticmethod
    @once_differentiable  # a second-order graph raises instead of giving gradients without one
    def backward(ctx, grad_out):
        xhat, weight, gamma, beta = ctx.saved_tensors
        stride, padding, use_gemm = ctx.conv
        grad_out = grad_out.to(weight.dtype).contiguous(memory_format=_layout(xhat))
        acc = _accumulation_dtype(weight)
        by_xhat = None  # C: not needed where only beta trains
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            by_xhat = _weight_grad_of(grad_out, xhat, weight, stride, padding, use_gemm).to(acc)
        sums = window_sums(grad_out, ctx.in_hw, tuple(weight.shape[2:]), stride, padding, acc)  # S
        w = weight.to(acc)
        grad_w = grad_gamma = grad_beta = None
        if ctx.needs_input_grad[3]:
            grad_w = gamma.to(acc).view(1, -1, 1, 1) * by_xhat + beta.to(acc).view(1, -1, 1, 1) * sums.unsqueeze(1)
            grad_w = grad_w.to(weight.dtype).contiguous(memory_format=_layout(weight))
        if ctx.needs_input_grad[1]:
            grad_gamma = (w * by_xhat).sum((0, 2, 3)).to(gamma.dtype)
        if ctx.needs_input_grad[2]:
            grad_beta = torch.tensordot(sums, w, dims=([0, 1, 2], [0, 2, 3])).to(beta.dtype)  # a GEMV on a CL w
        return None, grad_gamma, grad_beta, grad_w, None, None, None, None, None, None, None, None


def _accumulation_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32, or float64 for a float64 weight."""
    return torch.promote_types(weight.dtype, torch.float32)


def _layout(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _count_batch(bn: nn.BatchNorm2d) -> tuple[bool, torch.Tensor | None, torch.Tensor | None, float]:
    """What ``nn.BatchNorm2d.forward`` does before normalising: counts this batch (``num_batches_tracked``) where it
    tracks statistics in training, and returns (batch statistics?, running mean, running var, momentum) as it passes
    them to ``F.batch_norm``."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats  # else the running statistics are neither used nor updated
    return (batch_stats, bn.running_mean if keep else None, bn.running_var if keep else None, factor)


def folded_bn_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(bn(x))`` with the folded backward (see the module notes; the caller checks :func:`foldable`)."""
    weight = conv.weight
    weight_for = getattr(conv, "_weight_for", None)  # the bf16 copy of agebias.finetune.bf16_weights, if kept
    if weight_for is not None:
        weight = weight_for(weight)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else weight.dtype
    weight = weight.to(dtype)  # autograd casts the gradient back to the master's dtype
    use_gemm = (isinstance(conv, gemm_weight_grad.GemmWeightGradConv2d) and dtype == torch.bfloat16
                and gemm_weight_grad.output_positions(conv, x) <= gemm_weight_grad.MAX_OUTPUT_POSITIONS)
    batch_stats, running_mean, running_var, factor = _count_batch(bn)
    with torch.autocast("cpu", enabled=False):
        return _FoldedBnConv.apply(x, bn.weight, bn.bias, weight, running_mean, running_var, batch_stats, factor,
                                   bn.eps, tuple(conv.stride), tuple(conv.padding), use_gemm)


def foldable(block: IBasicBlock, x: torch.Tensor) -> bool:
    """Whether ``block``'s ``conv1(bn1(x))`` can take the folded backward now. Not: without grad, for an input that
    needs a gradient or is not a CPU float32/float64/bfloat16 tensor (an fx proxy is not), under jit tracing,
    scripting, ONNX export, compilation or functorch transforms (they see the block's own operations), for a
    ``bn1`` that is not a plain affine ``nn.BatchNorm2d`` with a trainable parameter, a ``conv1`` outside
    :func:`_plain_conv`, or either with forward hooks (e.g. weight reparametrisations)."""
    bn, conv = block.bn1, block.conv1
    if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and not x.requires_grad
            and x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64, torch.bfloat16)):
        return False
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()):
        return False
    autocast = torch.is_autocast_enabled("cpu")
    return (type(bn) is nn.BatchNorm2d and bn.affine and (bn.weight.requires_grad or bn.bias.requires_grad)
            and _plain_conv(conv) and conv.weight.device == x.device
            and not any(m._forward_hooks or m._forward_pre_hooks for m in (bn, conv))
            and (conv.weight.dtype == torch.float32 if autocast else conv.weight.dtype == x.dtype))


def _plain_conv(conv: nn.Module) -> bool:
    """An ``nn.Conv2d`` whose forward is ``nn.Conv2d``'s, with at most agebias's bf16 ``_conv_forward`` variants
    (same convolution, another weight copy or weight gradient) and the geometry :func:`gemm_weight_grad.covered`
    takes."""
    if not isinstance(conv, nn.Conv2d) or type(conv).forward is not nn.Conv2d.forward:
        return False
    own = {nn.modules.conv._ConvNd, nn.Conv2d, gemm_weight_grad.GemmWeightGradConv2d, bf16_weights._Bf16Conv2d}
    if any("_conv_forward" in vars(cls) and cls not in own for cls in type(conv).__mro__):
        return False
    return gemm_weight_grad.covered(conv)


class FoldedInputBlock(IBasicBlock):
    """``IBasicBlock`` whose ``conv1(bn1(x))`` takes the folded backward where :func:`foldable` holds (see the
    module notes); parameters and state-dict keys unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not foldable(self, x):
            return super().forward(x)
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(folded_bn_conv(self.bn1, self.conv1, x)))))
        return out + identity


def wanted(device: torch.device | str) -> bool:
    """CPU runs, unless ``AGEBIAS_NO_BN_FOLD`` is set."""
    return torch.device(device).type == "cpu" and os.environ.get("AGEBIAS_NO_BN_FOLD", "") in ("", "0")


def enable_for(model: nn.Module, device: torch.device | str) -> int:
    """Turn ``model``'s iresnet blocks whose ``bn1`` has a trainable parameter into :class:`FoldedInputBlock` (in
    place) where :func:`wanted`; returns how many. Which of them fold is decided per call (only a block whose input
    needs no gradient: the first trainable one)."""
    if not wanted(device):
        return 0
    count = 0
    for module in model.modules():
        if type(module) is IBasicBlock and any(p.requires_grad for p in module.bn1.parameters()):
            module.__class__ = FoldedInputBlock
            count += 1
    return count
