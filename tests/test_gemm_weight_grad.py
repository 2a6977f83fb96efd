"""bf16 training on CPU takes convolution weight gradients as one matrix product: the same gradient as the
convolution's own backward (exactly in fp64, within bf16 rounding under autocast), only for trainable, eligible
convolutions, and only in bf16 CPU runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from agebias.finetune import gemm_weight_grad
from agebias.finetune.gemm_weight_grad import GemmWeightGradConv2d, use_gemm_weight_grad, wanted, weight_grad
from agebias.finetune.trainer import run_finetune
from test_finetune_trainer import config, make_generated_set

GEOMETRIES = [  # (C_in, C_out, H, W, kernel, stride, padding)
    (8, 16, 9, 9, (3, 3), (1, 1), (1, 1)),
    (8, 16, 10, 10, (3, 3), (2, 2), (1, 1)),
    (8, 16, 10, 10, (1, 1), (2, 2), (0, 0)),
    (3, 5, 11, 8, (3, 1), (2, 1), (1, 0)),
    (4, 6, 7, 7, (5, 5), (1, 1), (2, 2)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_weight_grad_equals_the_convolutions_own_in_fp64(geometry, layout):
    c_in, c_out, h, w, kernel, stride, padding = geometry
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, c_in, h, w, generator=gen, dtype=torch.float64).contiguous(memory_format=layout)
    weight = torch.randn(c_out, c_in, *kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    out = nn.functional.conv2d(x, weight, None, stride, padding)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).contiguous(memory_format=layout)
    (expected,) = torch.autograd.grad(out, weight, grad_out)
    got = weight_grad(grad_out, x, kernel, stride, padding)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _conv_pair(c_in=16, c_out=32, stride=1):
    torch.manual_seed(0)
    plain = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False).to(memory_format=torch.channels_last)
    gemm = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False).to(memory_format=torch.channels_last)
    gemm.load_state_dict(plain.state_dict())
    assert use_gemm_weight_grad(gemm) == 1 and type(gemm) is GemmWeightGradConv2d
    return plain, gemm


@pytest.mark.parametrize("stride, size, product", [(1, 8, True), (2, 14, True), (1, 9, False)])
def test_bf16_autocast_gradients_match_within_bf16_rounding(stride, size, product):
    """Outputs up to 8x8 take the product (``product``); larger ones keep oneDNN's gradient."""
    plain, gemm = _conv_pair(stride=stride)
    x0 = torch.randn(4, 16, size, size).contiguous(memory_format=torch.channels_last)
    grads = {}
    for name, conv in (("plain", plain), ("gemm", gemm)):
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
        assert out.dtype == torch.bfloat16
        assert ("GemmWeightGrad" in type(out.grad_fn).__name__) == (name == "gemm" and product)
        (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        grads[name] = (out.detach().float(), x.grad, conv.weight.grad)
        assert conv.weight.grad.dtype == torch.float32
    # reference: the same bf16-rounded operands in fp64
    xr = x0.to(torch.bfloat16).double()
    wr = plain.weight.detach().to(torch.bfloat16).double().requires_grad_(True)
    outr = nn.functional.conv2d(xr, wr, None, stride, 1)
    (outr * torch.linspace(-1, 1, outr.numel(), dtype=torch.float64).view(outr.shape)).sum().backward()
    assert torch.equal(grads["gemm"][0], grads["plain"][0])  # the forward pass is the same oneDNN call
    torch.testing.assert_close(grads["gemm"][1], grads["plain"][1], rtol=0, atol=0)  # so is the input gradient
    scale = wr.grad.abs().max().item()
    err = {k: (g[2].double() - wr.grad).abs().max().item() / scale for k, g in grads.items()}
    assert err["gemm"] < 1e-2  # bf16 output rounding: ~2^-8 relative
    assert err["gemm"] <= 2 * err["plain"] + 1e-3


def test_outside_bf16_training_it_is_plain_conv2d():
    plain, gemm = _conv_pair()
    x = torch.randn(2, 16, 9, 9)
    assert torch.equal(gemm(x), plain(x))  # fp32
    assert "GemmWeightGrad" not in type(gemm(x).grad_fn).__name__
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(gemm(x), plain(x))  # inference under autocast
    gemm.weight.requires_grad_(False)
    plain.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(gemm(x), plain(x))  # a frozen weight


@pytest.mark.parametrize("change", ["bias", "reflect", "dilation", "same", "unbatched"])
def test_settings_it_does_not_cover_run_as_plain_conv2d_even_after_the_swap(change):
    torch.manual_seed(0)
    kwargs = {"bias": change == "bias", "padding_mode": "reflect" if change == "reflect" else "zeros",
              "dilation": 2 if change == "dilation" else 1, "padding": "same" if change == "same" else 1}
    plain = nn.Conv2d(4, 6, 3, **kwargs)
    gemm = GemmWeightGradConv2d(4, 6, 3, **kwargs)
    gemm.load_state_dict(plain.state_dict())
    x = torch.randn(*(() if change == "unbatched" else (2,)), 4, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = gemm(x), plain(x)
    assert "GemmWeightGrad" not in type(out.grad_fn).__name__
    assert torch.equal(out, ref)
    out.float().sum().backward()
    assert gemm.weight.grad is not None


def test_only_trainable_eligible_convolutions_are_converted():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # trainable: converted
        nn.Conv2d(8, 8, 3, padding=1, bias=False),  # frozen below
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),  # grouped
        nn.Conv2d(8, 8, 3, padding=1),  # with bias
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False),  # dilated
        nn.Conv2d(8, 8, 3, padding="same", bias=False),  # padding given as a word
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect", bias=False),
        nn.Conv2d(8, 8, 1, stride=2, bias=False),  # trainable: converted
    )
    model[1].weight.requires_grad_(False)
    keys = list(model.state_dict())
    assert use_gemm_weight_grad(model) == 2
    assert [type(m) is GemmWeightGradConv2d for m in model] == [True] + [False] * 6 + [True]
    assert list(model.state_dict()) == keys


def test_wanted_only_for_bf16_on_cpu(monkeypatch):
    monkeypatch.delenv("AGEBIAS_NO_GEMM_GRAD", raising=False)
    assert wanted("bf16", "cpu")
    assert not wanted("fp32", "cpu") and not wanted("bf16", "cuda") and not wanted("fp16", "cuda")
    monkeypatch.setenv("AGEBIAS_NO_GEMM_GRAD", "1")
    assert not wanted("bf16", "cpu")


def test_bf16_finetune_uses_it_and_trains_like_onednn(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    data = make_generated_set(tmp_path / "synth", n_ids=4, per_id=3)
    converted, products = [], []
    real, real_grad = gemm_weight_grad.use_gemm_weight_grad, gemm_weight_grad.weight_grad
    monkeypatch.setattr(gemm_weight_grad, "use_gemm_weight_grad", lambda net: converted.append(real(net)) or 0)
    monkeypatch.setattr(gemm_weight_grad, "weight_grad", lambda *a: products.append(a[0].shape) or real_grad(*a))
    losses, ran = {}, {}
    for name, env in (("gemm", "0"), ("onednn", "1")):
        monkeypatch.setenv("AGEBIAS_NO_GEMM_GRAD", env)
        res = run_finetune(config(data, tmp_path / name, precision="bf16", epochs=2, device="cpu"))
        losses[name] = [row["loss"] for row in res.rows]
        ran[name] = len(products)
    assert len(converted) == 1 and converted[0] > 0  # the trainable layer's convolutions, in the bf16 run only
    assert ran["gemm"] > 0 and ran["onednn"] == ran["gemm"]  # the products ran in training steps of that run only
    assert all(s[2] * s[3] <= gemm_weight_grad.MAX_OUTPUT_POSITIONS for s in products)
    assert np.isfinite(losses["gemm"]).all()
    np.testing.assert_allclose(losses["gemm"], losses["onednn"], rtol=0.05)
