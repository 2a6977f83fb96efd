"""The iresnets match insightface arcface_torch: key names/shapes, parameter count, and the forward computation.

The forward reference below is written independently from the block order of arcface_torch's
``recognition/arcface_torch/backbones/iresnet.py`` (``IBasicBlock.forward``, ``IResNet.forward``)
with torch.nn.functional ops driven only by the state dict, so "same embedding as arcface_torch's iresnet" is
checked without our module code on the reference side.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agebias.cli import main
from agebias.models.checkpoints import infer_arch, save_backbone
from agebias.models.iresnet import STAGE_DEPTHS
from agebias.models.registry import create_backbone

WIDTHS = (64, 128, 256, 512)
EPS = 1e-5


# ------------------------------------------------------------------------------ documented layout (reference)

def expected_layout(depths, widths=WIDTHS, num_features=512) -> dict[str, tuple[int, ...]]:
    """arcface_torch's state-dict keys and shapes, from the documented module tree."""
    out: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.{name}"] = (c,)
        out[f"{prefix}.num_batches_tracked"] = ()

    out["conv1.weight"] = (widths[0], 3, 3, 3)
    bn("bn1", widths[0])
    out["prelu.weight"] = (widths[0],)
    cin = widths[0]
    for s, (depth, w) in enumerate(zip(depths, widths, strict=True), start=1):
        for b in range(depth):
            p = f"layer{s}.{b}"
            bn(f"{p}.bn1", cin)
            out[f"{p}.conv1.weight"] = (w, cin, 3, 3)
            bn(f"{p}.bn2", w)
            out[f"{p}.prelu.weight"] = (w,)
            out[f"{p}.conv2.weight"] = (w, w, 3, 3)
            bn(f"{p}.bn3", w)
            if b == 0:
                out[f"{p}.downsample.0.weight"] = (w, cin, 1, 1)
                bn(f"{p}.downsample.1", w)
            cin = w
    bn("bn2", widths[3])
    out["fc.weight"] = (num_features, widths[3] * 49)
    out["fc.bias"] = (num_features,)
    bn("features", num_features)
    return out


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depths) -> torch.Tensor:
    """arcface_torch iresnet forward from a state dict, with functional ops only (eval mode)."""

    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            training=False, eps=EPS)

    x = F.prelu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"), sd["prelu.weight"])
    for s, depth in enumerate(depths, start=1):
        for b in range(depth):
            p = f"layer{s}.{b}"
            stride = 2 if b == 0 else 1
            out = bn(x, f"{p}.bn1")
            out = F.conv2d(out, sd[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(out, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn3")
            if b == 0:
                identity = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=2), f"{p}.downsample.1")
            else:
                identity = x
            x = out + identity
    x = torch.flatten(bn(x, "bn2"), 1)
    return bn(F.linear(x, sd["fc.weight"], sd["fc.bias"]), "features")


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and random BN statistics (scaled so deep nets stay finite)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif t.ndim == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                t.copy_(torch.randn(t.shape, generator=g) * (0.7 / fan_in ** 0.5))
            elif name == "fc.weight":
                t.copy_(torch.randn(t.shape, generator=g) / t.shape[1] ** 0.5)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_((torch.rand(t.shape, generator=g) - 0.5) * 0.2)
            elif name.endswith("prelu.weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.4)
            elif name.endswith("weight"):  # BN scales
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
    return model.eval()


# ------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("name", ["iresnet18", "iresnet50"])
def test_state_dict_layout_equals_arcface_torch(name):
    with torch.device("meta"):
        model = create_backbone(name)
    sd = model.state_dict()
    expected = expected_layout(STAGE_DEPTHS[name])
    assert list(sd) == list(expected)  # same keys, same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert infer_arch(sd) == name


def test_iresnet50_counts_and_key_names():
    with torch.device("meta"):
        model = create_backbone("iresnet50")
    sd = model.state_dict()
    assert len(sd) == 475
    assert sum(p.numel() for p in model.parameters()) == 43_590_848
    for key in ("layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var", "features.running_var",
                "layer3.13.conv2.weight", "layer4.2.bn3.num_batches_tracked", "prelu.weight", "fc.bias"):
        assert key in sd
    assert "layer1.1.downsample.0.weight" not in sd and "layer3.14.bn1.weight" not in sd
    assert model.features.weight.requires_grad is False


def test_tiny_forward_equals_functional_reference():
    model = randomise(create_backbone("iresnet:2,1,1,1@8,8,16,16"))
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, (2, 1, 1, 1))
    assert ours.shape == (3, 512)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def _crops() -> np.ndarray:
    from pathlib import Path

    import insightface
    from PIL import Image

    tom = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    a = np.asarray(Image.open(tom).convert("RGB"))
    b = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    return np.stack([a, b])


@pytest.mark.parametrize("name", ["iresnet18", pytest.param("iresnet50", marks=pytest.mark.slow)])
def test_embed_cli_matches_reference_iresnet(name, tmp_path):
    """`agebias embed --aligned` on an arcface_torch-layout state dict == the functional reference (cos >= 0.9999)."""
    from PIL import Image

    model = randomise(create_backbone(name), seed=3)
    ckpt = save_backbone(model, tmp_path / "backbone.pth")
    crops = _crops()
    paths = []
    for i, crop in enumerate(crops):
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(crop).save(p)
        paths.append(str(p))
    out = tmp_path / "emb.npz"
    rc = main(["--quiet", "embed", *paths, "--model", str(ckpt), "--aligned", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    data = np.load(out)
    assert list(data["paths"]) == paths
    emb = data["embeddings"]
    sd = torch.load(ckpt, weights_only=True)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        ref = reference_forward(sd, x, STAGE_DEPTHS[name]).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert emb.shape == (2, 512) and emb.dtype == np.float32
    assert np.all(np.isfinite(ref))
    cos = (emb * ref).sum(1)
    assert cos.min() >= 0.9999, cos
    assert abs(float(emb[0] @ emb[1])) < 0.999  # two different images give two different embeddings
