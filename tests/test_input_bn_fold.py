"""The first trainable block after a frozen prefix takes bn1's gradients from conv1's weight gradient: the forward
pass is the block's own, the gradients are autograd's (to float64 rounding in float64), conv1's input gradient is
never computed, and everything else runs IBasicBlock as it is."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from agebias.finetune import bf16_weights, gemm_weight_grad, input_bn_fold
from agebias.finetune.input_bn_fold import FoldedInputBlock, enable_for, foldable, window_sums
from agebias.finetune.jit_kernels import numba_installed
from agebias.finetune.trainer import run_finetune
from agebias.models.iresnet import IBasicBlock
from test_finetune_trainer import config, make_generated_set


def _block(inplanes: int, planes: int, stride: int, dtype=torch.float64, seed: int = 0) -> IBasicBlock:
    """An iresnet block with BatchNorm affine parameters away from (1, 0), so that gamma and beta both matter."""
    torch.manual_seed(seed)
    down = None
    if stride != 1 or inplanes != planes:
        down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
    block = IBasicBlock(inplanes, planes, stride, down)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.5)
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return block.to(dtype).train()


def _input(shape, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2 + 1).to(dtype)


def _grads(block, x, weights, autocast=False):
    block.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = block(x)
    (y.double() * weights).sum().backward()
    return y.detach(), {n: p.grad.detach().clone() for n, p in block.named_parameters()}


class _ConvBackwardCalls(TorchDispatchMode):
    """Records the weight's data pointer and the output mask of every convolution_backward call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution_backward.default:
            self.masks.append((args[2].data_ptr(), tuple(args[-1])))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("geometry", [(6, 12, 2, (3, 6, 9, 9)), (8, 8, 1, (2, 8, 5, 7))])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_float64_forward_is_the_blocks_and_gradients_are_autograds(geometry, momentum):
    inplanes, planes, stride, shape = geometry
    plain = _block(inplanes, planes, stride)
    plain.bn1.momentum = momentum
    folded = copy.deepcopy(plain)
    assert enable_for(folded, "cpu") == 1 and type(folded) is FoldedInputBlock
    x = _input(shape)
    assert foldable(folded, x)
    weights = torch.randn(plain(x).shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    plain.load_state_dict(folded.state_dict())  # undo the statistics update of the call above
    for _ in range(2):  # the second step sees updated running statistics and a counted batch
        y_ref, g_ref = _grads(plain, x, weights)
        with _ConvBackwardCalls() as calls:
            y, g = _grads(folded, x, weights)
        assert torch.equal(y, y_ref)
        for name, ref in g_ref.items():
            torch.testing.assert_close(g[name], ref, rtol=1e-11, atol=1e-12 * ref.abs().max().item(), msg=name)
        conv1 = [mask for ptr, mask in calls.masks if ptr == folded.conv1.weight.data_ptr()]
        assert conv1 == [(False, True, False)]  # conv1: the weight gradient only, no input gradient
        for key, value in plain.state_dict().items():
            assert torch.equal(folded.state_dict()[key], value), key


def test_eval_mode_batchnorm_folds_with_its_running_statistics():
    plain = _block(6, 6, 1)
    plain.bn1.eval()
    folded = copy.deepcopy(plain)
    enable_for(folded, "cpu")
    x = _input((2, 6, 5, 5))
    weights = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    y_ref, g_ref = _grads(plain, x, weights)
    y, g = _grads(folded, x, weights)
    assert torch.equal(y, y_ref)
    for name, ref in g_ref.items():
        torch.testing.assert_close(g[name], ref, rtol=1e-11, atol=1e-12 * ref.abs().max().item(), msg=name)


def test_window_sums_count_only_taps_inside_the_input():
    g = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    sums = window_sums(g, (9, 9), (3, 3), (2, 2), (1, 1), torch.float64)
    ones = torch.ones(3, 1, 9, 9, dtype=torch.float64)  # the weight gradient of a ones input counts the same taps
    ref = torch.ops.aten.convolution_backward(g, ones, torch.zeros(4, 1, 3, 3, dtype=torch.float64), None, [2, 2],
                                              [1, 1], [1, 1], False, [0, 0], 1, [False, True, False])[1][:, 0]
    torch.testing.assert_close(sums, ref)
    cl = g.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(window_sums(cl, (9, 9), (3, 3), (2, 2), (1, 1), torch.float64), ref)
    assert not torch.equal(sums[:, 0, 0], sums[:, 1, 1])  # the corner tap misses the first row and column


@pytest.mark.parametrize("kept", [True, False], ids=["kept-bf16-weights", "autocast-casts"])
@pytest.mark.parametrize("geometry", [(32, 64, 2, 14), (64, 64, 1, 7)], ids=["14x14-onednn", "7x7-gemm"])
def test_bf16_is_as_close_to_float64_as_autograd(monkeypatch, geometry, kept):
    """Under CPU bf16 autocast, channels-last, with the GEMM weight gradient and (or without) the bf16 weight copies
    the trainer uses: layer 4's block 0 at reduced width (conv1 at 14x14: oneDNN's weight gradient) and a 7x7 block
    (the first trainable one when layer 4's first block is frozen: the GEMM weight gradient). The fold's error
    against a float64 reference is autograd's."""
    if kept and not numba_installed():
        pytest.skip("numba is not installed (agebias[fast]): no bf16 weight copies to test with")
    inplanes, planes, stride, size = geometry
    cl = torch.channels_last
    ref = _block(inplanes, planes, stride)
    plain = _block(inplanes, planes, stride, torch.float32).to(memory_format=cl)
    plain.load_state_dict(ref.state_dict())
    folded = copy.deepcopy(plain)
    for block in (plain, folded):
        gemm_weight_grad.use_gemm_weight_grad(block)
    enable_for(folded, "cpu")
    copies = None
    if kept:
        copies = bf16_weights.enable_for(folded, torch.optim.SGD(folded.parameters(), lr=0.0), "bf16", "cpu")
        assert copies is not None and folded.conv1 in copies.modules
    gemm_calls = []
    real = gemm_weight_grad.weight_grad
    monkeypatch.setattr(gemm_weight_grad, "weight_grad",
                        lambda g, x, kernel, *a: gemm_calls.append(kernel) or real(g, x, kernel, *a))
    x = _input((8, inplanes, size, size), torch.float32).contiguous(memory_format=cl)
    out = size // stride
    weights = torch.randn(8, planes, out, out, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, g_ref = _grads(ref, x.double(), weights)
    y_plain, g_plain = _grads(plain, x, weights, autocast=True)
    gemm_calls.clear()
    folded.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16):
        y = folded(x)
    (y.double() * weights).sum().backward()
    assert torch.equal(y, y_plain)
    assert gemm_calls.count((3, 3)) == (2 if size == 7 else 1)  # conv2; and the fold's C (conv1) at 7x7
    g = {n: p.grad for n, p in folded.named_parameters()}
    if copies is not None:  # the kept weights' gradients sit on their bf16 copies; the masters have none
        for module in copies.modules:
            name = next(n for n, m in folded.named_modules() if m is module)
            assert g[f"{name}.weight"] is None
            g[f"{name}.weight"] = module._bf16_weight.grad
    for name in ("bn1.weight", "bn1.bias", "conv1.weight"):
        scale = g_ref[name].abs().max().item()
        err_plain = (g_plain[name].double() - g_ref[name]).abs().max().item() / scale
        err_fold = (g[name].double() - g_ref[name]).abs().max().item() / scale
        assert err_fold <= 1.5 * err_plain + 2e-3, (name, err_fold, err_plain)


@pytest.mark.parametrize("kernel,stride,padding,hw", [(3, 1, 1, (7, 5)), (3, 2, 1, (6, 9)), (3, 2, 0, (7, 7)),
                                                       (1, 2, 0, (6, 5)), (3, 1, 0, (5, 6))])
@pytest.mark.parametrize("trains", ["all", "gamma", "beta", "bn-only"])
def test_folded_bn_conv_matches_autograd_for_other_geometries_and_partial_training(kernel, stride, padding, hw,
                                                                                   trains):
    torch.manual_seed(4)
    bn = nn.BatchNorm2d(5).double().train()
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_(0, 0.5)
    conv = nn.Conv2d(5, 7, kernel, stride, padding, bias=False).double()
    bn.weight.requires_grad_(trains in ("all", "gamma", "bn-only"))
    bn.bias.requires_grad_(trains in ("all", "beta", "bn-only"))
    conv.weight.requires_grad_(trains != "bn-only")
    bn2, conv2 = copy.deepcopy(bn), copy.deepcopy(conv)
    x = _input((3, 5, *hw))
    y_ref = conv(bn(x))
    y = input_bn_fold.folded_bn_conv(bn2, conv2, x)
    assert torch.equal(y, y_ref)
    weights = torch.randn_like(y)
    (y_ref * weights).sum().backward()
    (y * weights).sum().backward()
    for a, b in zip((bn.weight, bn.bias, conv.weight), (bn2.weight, bn2.bias, conv2.weight), strict=True):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-11, atol=1e-12 * a.grad.abs().max().item())
    assert all(torch.equal(v, bn2.state_dict()[k]) for k, v in bn.state_dict().items())


def test_running_statistics_are_left_alone_where_batchnorm_leaves_them():
    """track_running_stats switched off after construction: nn.BatchNorm2d keeps (and ignores) its buffers."""
    plain = _block(6, 6, 1)
    plain.bn1.track_running_stats = False
    folded = copy.deepcopy(plain)
    enable_for(folded, "cpu")
    x = _input((2, 6, 5, 5))
    weights = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    before = {k: v.clone() for k, v in plain.bn1.state_dict().items()}
    y_ref, g_ref = _grads(plain, x, weights)
    y, g = _grads(folded, x, weights)
    assert torch.equal(y, y_ref)
    for key, value in before.items():
        assert torch.equal(folded.bn1.state_dict()[key], value), key
    torch.testing.assert_close(g["bn1.weight"], g_ref["bn1.weight"], rtol=1e-11, atol=1e-12)


def test_other_calls_run_the_block_as_it_is(monkeypatch):
    block = _block(6, 6, 1)
    enable_for(block, "cpu")
    calls = []
    monkeypatch.setattr(input_bn_fold._FoldedBnConv, "apply", lambda *a: calls.append(1))
    x = _input((2, 6, 5, 5))
    assert not foldable(block, x.clone().requires_grad_())  # a block inside the trainable part
    block(x.clone().requires_grad_())
    with torch.no_grad():
        block(x)
    with warnings.catch_warnings():  # torch.jit.trace is deprecated; torch.onnx.export still traces
        warnings.simplefilter("ignore")
        torch.jit.trace(block, x, check_trace=False)  # an export traces the block's own operations
    handle = block.conv1.register_forward_pre_hook(lambda m, args: None)  # e.g. a weight reparametrisation
    assert not foldable(block, x)
    block(x)
    handle.remove()
    block.eval()  # (a training BatchNorm's statistics update is an in-place write functorch refuses)
    params = {k: v.detach() for k, v in block.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(block, p, (x,)).sum())(params)
    assert grads["bn1.weight"].shape == (6,)  # functorch transforms see the block's own operations
    block.train()
    block.bn1.requires_grad_(False)
    assert not foldable(block, x)
    block(x)
    assert calls == []


def test_enable_for_converts_blocks_whose_bn1_trains(monkeypatch):
    model = nn.Sequential(_block(4, 4, 1), _block(4, 4, 1))
    model[0].requires_grad_(False)
    assert enable_for(copy.deepcopy(model), "meta") == 0
    monkeypatch.setenv("AGEBIAS_NO_BN_FOLD", "1")
    assert enable_for(copy.deepcopy(model), "cpu") == 0
    monkeypatch.delenv("AGEBIAS_NO_BN_FOLD")
    assert enable_for(model, "cpu") == 1
    assert type(model[0]) is IBasicBlock and type(model[1]) is FoldedInputBlock
    assert list(model[1].state_dict()) == list(_block(4, 4, 1).state_dict())


def test_a_second_order_graph_raises_instead_of_giving_flat_gradients():
    block = _block(4, 4, 1)
    enable_for(block, "cpu")
    y = block(_input((2, 4, 5, 5)))
    grad, = torch.autograd.grad((y ** 2).sum(), block.bn1.weight, create_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        grad.pow(2).sum().backward()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_finetune_folds_the_first_trainable_block_and_trains_as_autograd_does(tmp_path, monkeypatch, precision):
    data = make_generated_set(tmp_path / "synth", n_ids=4, per_id=3)
    used = []
    real = input_bn_fold._FoldedBnConv.backward
    monkeypatch.setattr(input_bn_fold._FoldedBnConv, "backward",
                        staticmethod(lambda ctx, g: used.append(1) or real(ctx, g)))
    losses, weights = {}, {}
    for name, env in (("fold", "0"), ("autograd", "1")):
        monkeypatch.setenv("AGEBIAS_NO_BN_FOLD", env)
        res = run_finetune(config(data, tmp_path / name, precision=precision, epochs=2, batch_size=4))
        losses[name] = [row["loss"] for row in res.rows]
        weights[name] = torch.load(res.backbone_path, map_location="cpu", weights_only=True)
        if name == "fold":
            assert used, "the first trainable block did not fold"
            n_used = len(used)
    assert len(used) == n_used  # AGEBIAS_NO_BN_FOLD=1 ran autograd's path
    if precision == "fp32":
        np.testing.assert_allclose(losses["fold"], losses["autograd"], rtol=1e-4)
        for key in ("layer4.0.bn1.weight", "layer4.0.bn1.bias", "layer4.0.conv1.weight", "layer4.0.bn1.running_var"):
            torch.testing.assert_close(weights["fold"][key], weights["autograd"][key], rtol=1e-4, atol=1e-6)
        assert not torch.equal(weights["fold"]["layer4.0.bn1.bias"], torch.zeros_like(
            weights["fold"]["layer4.0.bn1.bias"]))  # bn1 trained
    else:
        np.testing.assert_allclose(losses["fold"], losses["autograd"], rtol=0.05)
