"""bf16 training on CPU takes PReLU's backward pass from one compiled pass: the input gradient is bit for bit
torch's, the slope's gradient is summed in float32, and everything else runs nn.PReLU."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from agebias.finetune import bf16_prelu
from agebias.finetune.bf16_prelu import Bf16PReLU, enable_for, wanted
from agebias.finetune.jit_kernels import numba_installed
from agebias.finetune.trainer import run_finetune
from test_finetune_trainer import config, make_generated_set

pytestmark = pytest.mark.skipif(not numba_installed(), reason="numba is not installed (agebias[fast])")


def _inputs(shape, seed=0):
    """Channels-last bf16 input with exact zeros, and a channels-last bf16 output gradient."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x[:, :, 0, 0] = 0.0
    x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    return x, grad


def _torch_prelu(x, slope, grad):
    """Forward and gradients of torch's own PReLU under CPU bf16 autocast (fp32 slope, as a module holds it)."""
    xr, w = x.clone().requires_grad_(), slope.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        y = nn.functional.prelu(xr, w)
    y.backward(grad)
    return y.detach(), xr.grad, w.grad


def _ours(x, slope, grad):
    module = Bf16PReLU(x.shape[1])
    module.weight.data.copy_(slope)
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        y = module(xr)
    y.backward(grad)
    return y.detach(), xr.grad, module.weight.grad


@pytest.mark.parametrize("shape", [(3, 16, 5, 7), (25, 64, 14, 14), (2, 512, 1, 1)])
def test_gradients_are_torchs_with_the_slope_summed_in_float32(shape):
    x, grad = _inputs(shape)
    slope = torch.linspace(-0.5, 0.9, shape[1])
    y_ref, gx_ref, gw_ref = _torch_prelu(x, slope, grad)
    y, gx, gw = _ours(x, slope, grad)
    assert torch.equal(y, y_ref) and y.dtype == torch.bfloat16
    assert gx.dtype == torch.bfloat16 and torch.equal(gx, gx_ref)  # bit for bit
    assert gx.permute(0, 2, 3, 1).is_contiguous()  # channels-last, like the input
    exact = (grad.double() * x.double().clamp(max=0)).sum((0, 2, 3))
    assert gw.dtype == torch.float32
    scale = float(exact.abs().max()) + 1e-6
    err, err_ref = (float((g.double() - exact).abs().max()) / scale for g in (gw, gw_ref))
    assert err < 1e-5 and err <= err_ref  # float32 sums: at least as close as torch's bf16 ones


def test_nan_gradients_stay_nan():
    x, grad = _inputs((2, 8, 3, 3))
    x = -x.abs() - 1  # every input negative: the slope path
    grad[0, 3, 1, 1] = float("nan")
    _, gx, gw = _ours(x, torch.full((8,), 0.25), grad)
    assert torch.isnan(gx[0, 3, 1, 1]) and torch.isnan(gw[3])
    assert torch.isfinite(gx).sum() == gx.numel() - 1


def test_other_calls_run_nn_prelu(monkeypatch):
    """No autocast, no grad, an NCHW-contiguous input, or one shared slope: nn.PReLU's forward and autograd."""
    called = []
    real = bf16_prelu._Bf16PReLUFunction.apply
    monkeypatch.setattr(bf16_prelu._Bf16PReLUFunction, "apply", lambda *a: called.append(1) or real(*a))
    x, grad = _inputs((2, 8, 4, 4))
    module, plain = Bf16PReLU(8), nn.PReLU(8)
    assert torch.equal(module(x.float()), plain(x.float()))
    with torch.autocast("cpu", torch.bfloat16):
        with torch.no_grad():
            module(x)
        module(x.contiguous())  # NCHW
        Bf16PReLU(1)(x)
    assert called == []
    with torch.autocast("cpu", torch.bfloat16):
        module(x)
    assert called == [1]


def test_enable_for_converts_the_trainable_prelus_only(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PReLU(4), nn.Conv2d(4, 4, 3), nn.PReLU(4))
    net[1].weight.requires_grad_(False)
    keys = list(net.state_dict())
    monkeypatch.delenv("AGEBIAS_NO_BF16_PRELU", raising=False)
    assert wanted("bf16", "cpu") and not wanted("fp32", "cpu") and not wanted("bf16", "cuda")
    assert enable_for(net, "fp32", "cpu") == 0 and type(net[3]) is nn.PReLU
    assert enable_for(net, "bf16", "cpu") == 1
    assert type(net[1]) is nn.PReLU and type(net[3]) is Bf16PReLU and list(net.state_dict()) == keys
    monkeypatch.setenv("AGEBIAS_NO_BF16_PRELU", "1")
    assert not wanted("bf16", "cpu")


def test_the_kernel_is_loaded_from_numbas_cache_by_a_second_process():
    code = ("from agebias.finetune.bf16_prelu_kernel import prelu_backward_bf16 as k; "
            "print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs[1] == ["1", "0"], runs


def test_bf16_finetune_uses_it_and_trains_like_torchs_backward(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    data = make_generated_set(tmp_path / "synth", n_ids=4, per_id=3)
    used = []
    real = bf16_prelu._Bf16PReLUFunction.backward
    monkeypatch.setattr(bf16_prelu._Bf16PReLUFunction, "backward",
                        staticmethod(lambda ctx, g: used.append(1) or real(ctx, g)))
    kw = dict(precision="bf16", epochs=3, device="cpu", batch_size=4)
    losses = {}
    for name, env in (("kernel", "0"), ("torch", "1")):
        monkeypatch.setenv("AGEBIAS_NO_BF16_PRELU", env)
        res = run_finetune(config(data, tmp_path / name, **kw))
        losses[name] = [row["loss"] for row in res.rows]
        if name == "kernel":
            assert used, "the bf16 run did not use the compiled PReLU backward"
            n_used = len(used)
    assert len(used) == n_used  # the run with AGEBIAS_NO_BF16_PRELU=1 did not
    assert np.isfinite(losses["kernel"]).all()
    np.testing.assert_allclose(losses["kernel"], losses["torch"], rtol=0.05)


def test_a_second_order_graph_raises_instead_of_giving_flat_gradients():
    """E.g. a gradient penalty: the kernel's backward is not differentiable, so going through it twice raises."""
    x, _ = _inputs((2, 8, 3, 3))
    module = Bf16PReLU(8)
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        y = module(xr)
    gx, = torch.autograd.grad((y.float() ** 2).sum(), xr, create_graph=True)
    with pytest.raises(RuntimeError, match="twice"):  # not a silently missing second-order term
        gx.float().pow(2).sum().backward()


def test_the_kernel_uses_no_more_threads_than_torch(monkeypatch):
    """Under torchrun each CPU process runs torch on its share of the cores; the kernel follows torch's count."""
    import numba

    seen = []
    real = bf16_prelu._kernel()
    monkeypatch.setattr(bf16_prelu, "_kernel", lambda: (lambda *a: seen.append((numba.get_num_threads(),
                                                                                a[-1].shape[0])) or real(*a)))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, grad = _inputs((2, 8, 3, 3))
        _ours(x, torch.full((8,), 0.25), grad)
    finally:
        torch.set_num_threads(before)
    assert seen == [(1, 1)]
