"""bf16 fine-tuning on CPUs: ``--precision auto`` picks bf16 where the CPU has it natively, bf16 runs keep fp32
master weights and channels-last convolutions, and the bf16 frozen-prefix cache is lossless for a bf16 prefix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agebias import precision
from agebias.finetune.cache import build_cache
from agebias.finetune.freeze import freeze, parse_frozen_layers, run_stages
from agebias.finetune.hooks import TrainingHooks
from agebias.finetune.train_net import TrainNet
from agebias.finetune.trainer import run_finetune
from agebias.models.heads import create_head
from agebias.models.registry import create_backbone
from test_finetune_trainer import TINY, config, make_generated_set


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert precision.cpu_bf16_flags(info) == ["amx_bf16", "avx512_bf16"]
    info.write_text("flags\t\t: fpu sse avx2\n")
    assert precision.cpu_bf16_flags(info) == []
    assert precision.cpu_bf16_flags(tmp_path / "missing") == []


@pytest.mark.parametrize("flags, expected", [(["amx_bf16"], "bf16"), ([], "fp32")])
def test_auto_means_bf16_only_on_cpus_with_native_bf16(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"  # asked for: used even where it is emulated


def test_bf16_net_is_channels_last_with_fp32_master_weights():
    torch.manual_seed(0)
    model = create_backbone(TINY)
    depth = freeze(model, parse_frozen_layers("1,2,3")).prefix_depth
    net = TrainNet(model, create_head("arcface", 512, 4), TrainingHooks(), depth, 0.0, channels_last=True)
    conv = model.layer4[0].conv1.weight
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 16, 14, 14)
    y = torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = net(x, y, y, torch.zeros_like(y), 0, 0, torch.Generator())
    loss.backward()
    assert conv.grad.dtype == torch.float32 and torch.isfinite(loss)


def test_bf16_cache_is_lossless_for_a_bf16_prefix():
    torch.manual_seed(0)
    model = create_backbone(TINY).eval()
    depth = freeze(model, parse_frozen_layers("1,2,3")).prefix_depth
    images = torch.randn(6, 3, 112, 112)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    with torch.no_grad(), autocast():
        out = run_stages(model, images[:1], 0, depth)
    assert out.dtype == torch.bfloat16  # iresnet's stages end in bf16 sums under autocast
    caches = {dtype: build_cache(lambda x: run_stages(model, x, 0, depth), lambda idx: images[idx], 6,
                                 sample_shape=tuple(out.shape[1:]), dtype=dtype, autocast=autocast, batch_size=4)
              for dtype in ("fp32", "bf16")}
    idx = np.array([5, 0, 3])
    assert torch.equal(caches["bf16"].get(idx), caches["fp32"].get(idx))
    assert caches["bf16"].nbytes * 2 == caches["fp32"].nbytes


def test_auto_precision_is_recorded_as_the_one_chosen(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    data = make_generated_set(tmp_path / "synth", n_ids=4, per_id=3)
    res = run_finetune(config(data, tmp_path / "run", precision="auto", epochs=1, device="cpu"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["precision"] == "bf16"
    assert np.isfinite(res.rows[0]["loss"])
    # the same command again finds its finished run (auto resolves to the same precision)
    again = run_finetune(config(data, tmp_path / "run", precision="auto", epochs=1, device="cpu"))
    assert again.completed and again.config_hash == res.config_hash


@pytest.mark.parametrize("flags", [["amx_bf16", "avx512_bf16"], []])
def test_doctor_says_whether_the_cpu_has_native_bf16(monkeypatch, capsys, flags):
    from agebias.cli import main

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: flags)
    assert main(["doctor", "--json"]) == 0
    check = {c["name"]: c for c in json.loads(capsys.readouterr().out) if c["section"] == "runtime"}["bf16"]
    assert check["ok"] == bool(flags)
    assert ("amx_bf16, avx512_bf16" in check["detail"]) == bool(flags)
    assert ("trains in bf16" if flags else "keeps fp32") in check["detail"]
