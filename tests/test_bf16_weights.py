"""bf16 training on CPU keeps trainable conv/linear weights in bf16 between steps: the forward pass and gradients
are autocast's, the fused update is torch's SGD, Adam or AdamW on the fp32 masters, and the copies follow the
masters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from agebias.finetune.bf16_weights import Bf16Weights, enable_for, wanted
from agebias.finetune.jit_kernels import numba_installed
from agebias.finetune.trainer import run_finetune
from test_finetune_trainer import config, make_generated_set

pytestmark = pytest.mark.skipif(not numba_installed(), reason="numba is not installed (agebias[fast])")


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Flatten(),
                        nn.Linear(8 * 5 * 5, 6))
    return net.to(memory_format=torch.channels_last)


def sgd(params, **kw) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.05, **kw)


SETTINGS = [dict(momentum=0.9, weight_decay=5e-4), dict(momentum=0.0, weight_decay=1e-2),
            dict(momentum=0.8, dampening=0.3, weight_decay=0.0), dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
            dict(momentum=0.5, weight_decay=1e-3, maximize=True)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_fused_step_is_torch_sgd_on_the_bf16_gradients(settings):
    net, ref = tiny_net(), tiny_net()
    opt, ref_opt = sgd(net.parameters(), **settings), sgd(ref.parameters(), foreach=False, **settings)
    kept = Bf16Weights(net, opt)
    assert len(kept) == 2  # the conv and the linear; BatchNorm is left to the optimizer
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        for m, r in zip(kept.modules, (ref[0], ref[3]), strict=True):
            g = torch.randn(m.weight.shape, generator=gen).to(torch.bfloat16)
            m._bf16_weight.grad = g.contiguous(memory_format=torch.channels_last) if g.dim() == 4 else g
            r.weight.grad = g.float()
        kept.step(opt)
        opt.step()  # nothing left for it: the masters have no grad
        ref_opt.step()
        for m, r in zip(kept.modules, (ref[0], ref[3]), strict=True):
            torch.testing.assert_close(m.weight, r.weight, rtol=1e-6, atol=1e-6)  # a few float32 ulps apart
            assert torch.equal(m._bf16_weight, m.weight.to(torch.bfloat16))  # round to nearest even, as autocast
            assert m._bf16_weight.grad is None and m.weight.grad is None
            if settings["momentum"]:
                torch.testing.assert_close(opt.state[m.weight]["momentum_buffer"],
                                           ref_opt.state[r.weight]["momentum_buffer"], rtol=1e-6, atol=1e-6)
            else:
                assert "momentum_buffer" not in opt.state[m.weight]


ADAM_SETTINGS = [(torch.optim.AdamW, dict(weight_decay=1e-2)), (torch.optim.Adam, dict(weight_decay=1e-2)),
                 (torch.optim.AdamW, dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0, maximize=True)),
                 (torch.optim.Adam, dict(betas=(0.3, 0.5), weight_decay=0.0)),
                 (torch.optim.AdamW, dict(betas=(0.6, 0.9), weight_decay=0.1, lr=torch.tensor(0.02)))]


def _feed(kept: Bf16Weights, ref: nn.Module, gen: torch.Generator) -> None:
    """The same random bf16 gradient for each kept weight and its reference twin (ref[0]: the conv, ref[3]: the
    linear)."""
    for m, r in zip(kept.modules, (ref[0], ref[3]), strict=True):
        g = torch.randn(m.weight.shape, generator=gen).to(torch.bfloat16)
        m._bf16_weight.grad = g.contiguous(memory_format=torch.channels_last) if g.dim() == 4 else g
        r.weight.grad = torch.empty_like(r.weight).copy_(g)  # in the weight's layout, as autograd leaves it


def _name(value) -> str:
    return value.__name__ if isinstance(value, type) else ",".join(f"{k}={x}" for k, x in value.items())


@pytest.mark.parametrize("cls,settings", ADAM_SETTINGS, ids=_name)
def test_fused_step_is_torch_adam_on_the_bf16_gradients(cls, settings):
    settings = {"lr": 1e-3, **settings}
    net, ref, fused = tiny_net(), tiny_net(), tiny_net()
    opt, ref_opt = cls(net.parameters(), **settings), cls(ref.parameters(), foreach=False, **settings)
    fused_opt = cls(fused.parameters(), fused=True, **settings)
    kept = Bf16Weights(net, opt)
    assert len(kept) == 2
    gen = torch.Generator().manual_seed(1)
    for step in range(1, 6):
        _feed(kept, ref, gen)
        for f, r in ((fused[0], ref[0]), (fused[3], ref[3])):
            f.weight.grad = r.weight.grad.clone()
        kept.step(opt)
        opt.step()
        ref_opt.step()
        fused_opt.step()
        for m, f in zip(kept.modules, (fused[0], fused[3]), strict=True):  # torch's fused Adam: the same bits
            assert torch.equal(opt.state[m.weight]["exp_avg"], fused_opt.state[f.weight]["exp_avg"])
            torch.testing.assert_close(m.weight, f.weight, rtol=1e-6, atol=1e-7)
        for m, r in zip(kept.modules, (ref[0], ref[3]), strict=True):
            # torch's sqrt is not always correctly rounded: the weights may differ by an ulp, the moments not at all
            torch.testing.assert_close(m.weight, r.weight, rtol=1e-6, atol=1e-7)
            assert torch.equal(m._bf16_weight, m.weight.to(torch.bfloat16))
            assert m._bf16_weight.grad is None and m.weight.grad is None
            state, ref_state = opt.state[m.weight], ref_opt.state[r.weight]
            assert float(state["step"]) == float(ref_state["step"]) == step
            torch.testing.assert_close(state["exp_avg"], ref_state["exp_avg"], rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(state["exp_avg_sq"], ref_state["exp_avg_sq"], rtol=1e-6, atol=1e-12)
    assert (net[0].weight - tiny_net()[0].weight).abs().max() > 1e-4  # it did train


def test_adam_moment_is_one_fused_multiply_add_as_in_torch():
    """exp_avg = lerp(exp_avg, g, 1 - beta1) rounded once: a case where rounding the float64 result again would
    give the neighbouring fp32 value (1 + 2 * 2**-23 instead of torch's 1 + 2**-23)."""
    weight = 2.0 ** -24 + 2.0 ** -47  # 1 - beta1, an fp32 value
    got = {}
    for kind in ("kernel", "torch"):
        lin = nn.Linear(1, 16, bias=False)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-3, betas=(1.0 - weight, 0.999), foreach=False)
        opt.state[lin.weight] = {"step": torch.tensor(3.0), "exp_avg": torch.full((16, 1), 1.0 + 2.0 ** -23),
                                 "exp_avg_sq": torch.ones(16, 1)}
        if kind == "kernel":
            kept = Bf16Weights(lin, opt)
            kept.modules[0]._bf16_weight.grad = torch.full((16, 1), 2.0, dtype=torch.bfloat16)
            kept.step(opt)
        else:
            lin.weight.grad = torch.full((16, 1), 2.0)
            opt.step()
        got[kind] = opt.state[lin.weight]["exp_avg"]
    assert torch.equal(got["kernel"], got["torch"]) and got["torch"][0, 0].item() == 1.0 + 2.0 ** -23


@pytest.mark.parametrize("fused", [False, True])
def test_adam_state_is_torchs_own_so_either_step_continues_the_other(fused):
    torch.manual_seed(0)
    net, ref = tiny_net(), tiny_net()
    opt, ref_opt = (torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-2, fused=fused) for m in (net, ref))
    kept = Bf16Weights(net, opt)
    gen = torch.Generator().manual_seed(2)
    for step in range(6):
        _feed(kept, ref, gen)
        if step in (2, 3):  # torch's own step in between (e.g. a weight also used directly that step)
            for m in kept.modules:
                m.weight.grad = m._bf16_weight.grad.float()
                m._bf16_weight.grad = None
        kept.step(opt)
        opt.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=True)
    for m, r in zip(kept.modules, (ref[0], ref[3]), strict=True):
        torch.testing.assert_close(m.weight, r.weight, rtol=1e-5, atol=1e-6)
        assert torch.equal(m._bf16_weight, m.weight.to(torch.bfloat16))
    restored = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=1e-2)
    restored.load_state_dict(opt.state_dict())  # a checkpoint of the kept run loads into torch's optimizer
    assert [float(s["step"]) for s in restored.state.values()] == [6.0] * len(restored.state)


@pytest.mark.parametrize("make", [lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True),
                                  lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, fused=True),
                                  lambda ps: torch.optim.Adagrad(ps, lr=1e-1, fused=True),
                                  lambda ps: torch.optim.RMSprop(ps, lr=1e-2, momentum=0.5)],
                         ids=["amsgrad", "amsgrad-fused", "adagrad-fused", "rmsprop"])
def test_what_the_kernels_do_not_do_is_left_to_torchs_step(make):
    net, ref = tiny_net(), tiny_net()
    opt, ref_opt = make(net.parameters()), make(ref.parameters())
    kept = Bf16Weights(net, opt)
    assert len(kept) == 2
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 5)
    for _ in range(3):
        _feed(kept, ref, gen)
        kept.step(opt)
        assert all(m.weight.grad is not None and m._bf16_weight.grad is None for m in kept.modules)  # handed over
        opt.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=True)
        for m, r in zip(kept.modules, (ref[0], ref[3]), strict=True):
            assert torch.equal(m.weight, r.weight)
        # the copies follow torch's updates, fused ones included (they leave no version bump)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(net(x), ref(x))
        assert all(torch.equal(m._bf16_weight, m.weight.to(torch.bfloat16)) for m in kept.modules)


@pytest.mark.parametrize("make", [lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, fused=True),
                                  lambda ps: torch.optim.AdamW(ps, lr=1e-2, fused=True)], ids=["sgd", "adamw"])
def test_a_master_whose_layout_changed_after_the_forward_gets_a_gradient_in_its_layout(make):
    net, ref = tiny_net(), tiny_net()
    opt, ref_opt = make(net.parameters()), make(ref.parameters())
    kept = Bf16Weights(net, opt)
    _feed(kept, ref, torch.Generator().manual_seed(4))
    for model in (net, ref):  # the conv weight turns contiguous between backward and step
        model[0].weight.data = model[0].weight.data.contiguous()
    ref[0].weight.grad = ref[0].weight.grad.contiguous()
    kept.step(opt)
    assert net[0].weight.grad.stride() == net[0].weight.stride()  # torch's fused steps pair elements by memory
    opt.step()
    ref_opt.step()
    torch.testing.assert_close(net[0].weight, ref[0].weight, rtol=1e-6, atol=1e-7)


def test_forward_and_gradients_are_autocasts_and_the_master_gets_none():
    net, ref = tiny_net(), tiny_net()
    kept = Bf16Weights(net, sgd(net.parameters(), momentum=0.9))
    assert list(net.state_dict()) == list(ref.state_dict())  # parameters and state-dict keys unchanged
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    for model in (net, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).float().square().sum().backward()
    conv, linear = kept.modules
    assert conv.weight.grad is None and linear.weight.grad is None
    for m, r in zip(kept.modules, (ref[0], ref[3]), strict=True):
        assert m._bf16_weight.grad.dtype == torch.bfloat16
        assert torch.equal(m._bf16_weight.grad.float(), r.weight.grad)  # autocast's grad, cast back to fp32
    assert torch.equal(net[1].weight.grad, ref[1].weight.grad)
    with torch.no_grad():  # outside autocast the fp32 master weights run, as in plain nn.Conv2d / nn.Linear
        assert torch.equal(net(x), ref(x))


def test_a_master_changed_elsewhere_is_copied_again_before_it_is_used():
    net = tiny_net()
    kept = Bf16Weights(net, sgd(net.parameters(), momentum=0.9))
    other = tiny_net()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-3)
    net.load_state_dict(other.state_dict())  # e.g. a checkpoint restored
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(net(x), other(x))
    assert all(torch.equal(m._bf16_weight, m.weight.to(torch.bfloat16)) for m in kept.modules)


def test_a_functional_call_runs_its_own_weights_and_they_get_the_gradients():
    torch.manual_seed(0)
    net, ref = (nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Flatten(), nn.Linear(36, 5)) for _ in range(2))
    kept = Bf16Weights(net, sgd(net.parameters(), momentum=0.9))
    assert len(kept) == 2
    params = {k: torch.randn(v.shape, requires_grad=True) for k, v in ref.named_parameters()}
    x = torch.randn(2, 3, 5, 5)
    outs = []
    for model in (net, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(torch.func.functional_call(model, params, (x,)))
    assert torch.equal(outs[0], outs[1])  # not the module's own (bf16-kept) weights
    outs[0].float().sum().backward()
    assert params["0.weight"].grad is not None and all(m._bf16_weight.grad is None for m in kept.modules)


@pytest.mark.parametrize("make", [lambda ps, **kw: sgd(ps, momentum=0.9, **kw),
                                  lambda ps, **kw: torch.optim.AdamW(ps, lr=1e-2, **kw)], ids=["sgd", "adamw"])
@pytest.mark.parametrize("fused", [False, True])
def test_a_weight_used_twice_or_also_directly_is_left_to_torchs_step(make, fused):
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    tied[2].weight = tied[0].weight
    assert len(Bf16Weights(tied, make(tied.parameters()))) == 0
    torch.manual_seed(0)
    net, ref = nn.Linear(4, 3), nn.Linear(4, 3)
    ref.load_state_dict(net.state_dict())
    opt, ref_opt = make(net.parameters(), fused=fused), make(ref.parameters(), fused=fused)
    kept = Bf16Weights(net, opt)
    x = torch.randn(5, 4)
    for through_module in (True, False, True):  # the middle step uses the master only directly
        for model, o in ((net, opt), (ref, ref_opt)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = (model.weight ** 2).sum()  # the master also used directly
                if through_module:
                    loss = loss + model(x).float().sum()
            o.zero_grad(set_to_none=True)
            loss.backward()
            if o is opt:
                kept.step(o)
            o.step()
        torch.testing.assert_close(net.weight, ref.weight, rtol=1e-6, atol=1e-6)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the copy follows torch's update
            assert torch.equal(net(x), ref(x))


@pytest.mark.parametrize("module,name", [("bf16_sgd_kernel", "sgd_bf16"), ("bf16_adam_kernel", "adam_bf16")])
def test_the_kernel_is_loaded_from_numbas_cache_by_a_second_process(module, name):
    import subprocess
    import sys

    code = (f"from agebias.finetune.{module} import {name} as k; "
            "print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs[1] == ["1", "0"], runs  # compiled once (here or earlier), then loaded


def test_wanted_only_for_bf16_sgd_or_adam_on_one_cpu_process(monkeypatch):
    monkeypatch.delenv("AGEBIAS_NO_BF16_WEIGHTS", raising=False)
    net = tiny_net()
    opt = sgd(net.parameters(), momentum=0.9)
    assert wanted("bf16", "cpu", opt, 1)
    assert not wanted("fp32", "cpu", opt, 1) and not wanted("bf16", "cuda", opt, 1)
    assert not wanted("bf16", "cpu", opt, 2)  # DDP reduces the masters' gradients: it needs them
    assert wanted("bf16", "cpu", torch.optim.AdamW(net.parameters()), 1)
    assert wanted("bf16", "cpu", torch.optim.Adam(net.parameters()), 1)
    assert not wanted("bf16", "cpu", torch.optim.RMSprop(net.parameters()), 1)
    monkeypatch.setenv("AGEBIAS_NO_BF16_WEIGHTS", "1")
    assert not wanted("bf16", "cpu", opt, 1)
    assert enable_for(net, opt, "bf16", "cpu") is None and type(net[0]) is nn.Conv2d


def test_frozen_and_unowned_weights_are_left_alone():
    net = tiny_net()
    net[0].weight.requires_grad_(False)
    kept = Bf16Weights(net, sgd([net[1].weight, net[1].bias], momentum=0.9))  # the linear is not the optimizer's
    assert len(kept) == 0 and type(net[0]) is nn.Conv2d and type(net[3]) is nn.Linear


def test_bf16_finetune_keeps_weights_in_bf16_trains_like_autocast_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    data = make_generated_set(tmp_path / "synth", n_ids=4, per_id=3)
    built, steps = [], []
    real_init, real_step = Bf16Weights.__init__, Bf16Weights.step
    monkeypatch.setattr(Bf16Weights, "__init__", lambda self, *a: real_init(self, *a) or built.append(len(self)))
    monkeypatch.setattr(Bf16Weights, "step", lambda self, opt: steps.append(1) or real_step(self, opt))
    kw = dict(precision="bf16", epochs=3, device="cpu", batch_size=4)
    losses = {}
    for name, env in (("kept", "0"), ("autocast", "1")):
        monkeypatch.setenv("AGEBIAS_NO_BF16_WEIGHTS", env)
        res = run_finetune(config(data, tmp_path / name, onnx=name == "kept", **kw))
        losses[name] = [row["loss"] for row in res.rows]
        if name == "kept":  # the export runs the converted modules in fp32, as plain nn.Conv2d / nn.Linear
            assert res.onnx_path is not None and res.onnx_path.stat().st_size > 0
    assert len(built) == 1 and built[0] > 0 and len(steps) > 0  # used by the bf16 run, at every step
    assert np.isfinite(losses["kept"]).all()
    np.testing.assert_allclose(losses["kept"], losses["autocast"], rtol=0.05)
    # interrupted after epoch 1, resumed: the same weights and losses as the uninterrupted run
    monkeypatch.setenv("AGEBIAS_NO_BF16_WEIGHTS", "0")
    part = run_finetune(config(data, tmp_path / "ext", **kw, stop_after_epochs=1))
    assert part.epochs_done == 1
    resumed = run_finetune(config(data, tmp_path / "ext", **kw, resume=True))
    assert [row["loss"] for row in resumed.rows] == losses["kept"]
    a, b = (torch.load(p, map_location="cpu") for p in (tmp_path / "kept" / "backbone.pth",
                                                       resumed.backbone_path))
    assert all(torch.equal(a[k], b[k]) and b[k].dtype != torch.bfloat16 for k in a)  # fp32 masters are saved
    assert json.loads((tmp_path / "ext" / "config.json").read_text())["config"]["precision"] == "bf16"


def test_bf16_adamw_finetune_keeps_weights_in_bf16_trains_like_autocast_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    data = make_generated_set(tmp_path / "synth", n_ids=4, per_id=3)
    steps = []
    real_step = Bf16Weights.step
    monkeypatch.setattr(Bf16Weights, "step", lambda self, opt: steps.append(type(opt)) or real_step(self, opt))
    kw = dict(precision="bf16", epochs=3, device="cpu", batch_size=4, optimizer="adamw", lr=1e-4)
    losses = {}
    for name, env in (("kept", "0"), ("autocast", "1")):
        monkeypatch.setenv("AGEBIAS_NO_BF16_WEIGHTS", env)
        losses[name] = [row["loss"] for row in run_finetune(config(data, tmp_path / name, **kw)).rows]
    assert steps and set(steps) == {torch.optim.AdamW}
    assert np.isfinite(losses["kept"]).all()
    np.testing.assert_allclose(losses["kept"], losses["autocast"], rtol=0.05)
    monkeypatch.setenv("AGEBIAS_NO_BF16_WEIGHTS", "0")  # interrupted after epoch 1, resumed: the same run
    assert run_finetune(config(data, tmp_path / "ext", **kw, stop_after_epochs=1)).epochs_done == 1
    resumed = run_finetune(config(data, tmp_path / "ext", **kw, resume=True))
    assert [row["loss"] for row in resumed.rows] == losses["kept"]
    a, b = (torch.load(p, map_location="cpu") for p in (tmp_path / "kept" / "backbone.pth", resumed.backbone_path))
    assert all(torch.equal(a[k], b[k]) for k in a)
