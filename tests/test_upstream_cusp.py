"""The ``cusp`` adapter against the real CUSP code (github guillermogotre/CUSP, checkout named by
``AGEBIAS_CUSP_REPO``): its ``Image2Image`` built with random weights at the smallest working size (5 downsamplings
as the authors train, 16 channels, style width 32, 2-layer mappings) for the restricted-range model (224 px, 101-way
age one-hot, FFHQ crop) and the lifespan model (256 px, 10 classes, FFHQ-Aging crop), with the saliency wrapper on
the real ``DEXAgeClassifier`` (a full-size VGG-16), pickled as the training loop snapshots it, then ``agebias
generate --method cusp`` end to end on CPU. Skipped, with the reason, without the checkout or its requirements."""

from __future__ import annotations

import csv
import json
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from agebias.cli import main
from helpers_faces import synthetic_face
from helpers_upstream import (checkout_on_path, checkout_or_skip, file_sha256, png, restored_imports,
                              skip_without_modules, training_snapshot, write_pickle)

pytestmark = [pytest.mark.upstream, pytest.mark.slow]

DEX_NAME = "dex_imdb_wiki.caffemodel.pt"
VARIANTS = {  # variant: (side, classes, DEX outclass as trained, ages, age classes expected, crop factor)
    "rr": (224, 101, "max", (25, 60), (25, 60), 1.8),
    "ls": (256, 10, "all", (5, 45), (1, 7), 2.2),
}


@pytest.fixture
def repo():
    root = checkout_or_skip("AGEBIAS_CUSP_REPO", "", "github.com/guillermogotre/CUSP")
    skip_without_modules("pandas", "scipy", "torchvision", why="the CUSP checkout (training/loss.py)")
    with restored_imports():
        yield root


@pytest.fixture(scope="module")
def dex_file(tmp_path_factory):
    """Random DEX weights as a state dict with DEX's key names ('fc8-101'), He-initialised so that activations
    survive the 16 layers. The two big fully connected layers (4096 x 25088 and 4096 x 4096) are stored as
    overlapping windows of one random vector (row j = v[j:j + fan_in]), which keeps the file at ~60 MB; loading
    gives them the full VGG-16 shapes."""
    import torch

    root = checkout_or_skip("AGEBIAS_CUSP_REPO", "", "github.com/guillermogotre/CUSP")
    with restored_imports(), checkout_on_path(root):
        from training.networks import VGG

        with torch.device("meta"):
            shapes = {k: v.shape for k, v in VGG().state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith(".bias"):
            value = torch.zeros(shape)
        elif key in ("fc6.weight", "fc7.weight"):
            v = torch.randn(shape[0] + shape[1], generator=gen) * (2.0 / shape[1]) ** 0.5
            value = v.as_strided(shape, (1, 1))
        else:
            fan_in = int(np.prod(shape[1:]))
            value = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
        state[key.replace("fc8_101", "fc8-101")] = value
    path = tmp_path_factory.mktemp("dex") / DEX_NAME
    torch.save(state, path)
    return path


def _broadcast_params(module) -> None:
    """Store a module's parameters as broadcast views of one value each (tiny in a pickle)."""
    import torch

    for name, p in list(module.named_parameters()):
        owner, attr = name.rsplit(".", 1)
        value = p.detach().reshape(-1)[:1].clone().expand(p.shape)
        setattr(module.get_submodule(owner), attr, torch.nn.Parameter(value, requires_grad=False))


def _build_snapshot(repo, run_dir, variant, dex):
    """``network-snapshot-000000.pkl`` with G, D and G_ema, as CUSP's train.py configures Image2Image (linear skip
    on layer 2, skip blur, 'gb' saliency on DEX, random mask blur). G_ema's deep copy re-reads the DEX file, as in
    training; the DEX copies inside the pickle are stored broadcast (the adapter replaces them from the DEX file,
    as the authors' notebook does)."""
    import torch

    side, classes, outclass = VARIANTS[variant][:3]
    with checkout_on_path(repo), _no_default_init():
        from training.networks import Discriminator, Image2Image

        torch.manual_seed(0)
        G = Image2Image(img_resolution=side, img_channels=3, n_downsample=5, attr_dim=classes, channel_max=16,
                        style_dim=32, style_layers=2, attr_layers=2, skip_layers=[2], skip_kind="linear",
                        synthesis_kwargs={"channel_base": 256, "channel_max": 16, "num_fp16_res": 0,
                                          "conv_clamp": None},
                        classifier_kwargs={"class_name": "training.loss.DEXAgeClassifier", "vgg_path": str(dex),
                                           "own_relu": True, "outclass": outclass},
                        blur_skip=True, skip_grad_blur="gb", learn_mask=None, blur_msk="random", style_enc=True)
        D = Discriminator(c_dim=classes, img_resolution=side, img_channels=3, channel_base=256, channel_max=16)
        snap = training_snapshot(G, D, {"resolution": side})
        # G_ema's first call in training moves its fresh DEX copy to the GPU, and the wrapper re-registers its
        # Grad-CAM hooks (assert_device); until then its deep-copied hook handles point to dead dicts, which
        # torch >= 2 writes into a pickle it then cannot read
        snap["G_ema"].skip_grad_blur.register_hooks()
        for net in (snap["G"], snap["G_ema"]):
            _broadcast_params(net.skip_grad_blur.model.classifier)
        return write_pickle(run_dir / "network-snapshot-000000.pkl", snap)


@contextmanager
def _no_default_init():
    """Skip torch's default initialisation of ``nn.Linear``/``nn.Conv2d`` (VGG-16's 138M weights take seconds):
    in these networks only the DEX VGG uses them, and loading the DEX state dict overwrites every weight."""
    import torch

    saved = torch.nn.Linear.reset_parameters, torch.nn.Conv2d.reset_parameters
    torch.nn.Linear.reset_parameters = torch.nn.Conv2d.reset_parameters = lambda self: None
    try:
        yield
    finally:
        torch.nn.Linear.reset_parameters, torch.nn.Conv2d.reset_parameters = saved


def _sources(folder):
    """Two aligned 112x112 source faces with identical pixels (a.png, b.png)."""
    from agebias.data.align import ARCFACE_TEMPLATE

    folder.mkdir(parents=True)
    Image.fromarray(synthetic_face(ARCFACE_TEMPLATE, size=(112, 112), seed=3)).save(folder / "a.png")
    shutil.copy(folder / "a.png", folder / "b.png")
    return folder


@pytest.mark.parametrize("variant", ["rr", "ls"])
def test_cusp_end_to_end(repo, dex_file, tmp_path, variant):
    side, _, _, ages, age_classes, factor = VARIANTS[variant]
    run = tmp_path / "run"
    pkl = _build_snapshot(repo, run, variant, dex_file)
    if variant == "rr":
        dex_args = ["--option", f"dex={dex_file}"]
    else:  # found beside the checkpoint
        shutil.copy(dex_file, run / DEX_NAME)
        dex_args = []
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--method", "cusp", "--sources", str(_sources(tmp_path / "src")),
               "--aligned-sources", "--ages", ",".join(map(str, ages)), "--checkpoint", str(pkl), "--repo",
               str(repo), "--trust-checkpoint", "--device", "cpu", "--batch-size", "1", "--out", str(out),
               *dex_args])
    assert rc == 0
    rows = list(csv.DictReader((out / "manifest.csv").read_text().splitlines()))
    assert [(r["id"], int(r["age"])) for r in rows] == [(i, a) for i in ("a", "b") for a in ages]
    for r in rows:
        path = out / r["path"]
        assert r["path"] == f"{r['id']}/{r['id']}_{r['age']}.png" and r["method"] == "cusp"
        assert r["source"].endswith(f"{r['id']}.png") and r["checksum"] == file_sha256(path)
        assert png(path).shape == (side, side, 3)
    params = [json.loads(r["parameters"]) for r in rows]
    assert [p["age_class"] for p in params[:2]] == list(age_classes)
    p = params[0]
    assert p["variant"] == variant and p["side"] == side and f"factor {factor}" in p["crop"]
    assert (p["global_blur"], p["mask_blur"]) == (0.2, 0.8)
    warnings = json.loads((out / "generation.json").read_text())["warnings"]
    assert (any("our reading" in w for w in warnings)) == (variant == "ls")
    # the age reaches the network; the same source and age give the same pixels (no random blur)
    a0, a1, b0 = (png(out / i / f"{i}_{age}.png") for i, age in (("a", ages[0]), ("a", ages[1]), ("b", ages[0])))
    assert not np.array_equal(a0, a1)
    assert np.array_equal(a0, b0)


def test_saliency_backpropagates_through_dex_and_forward_is_random(repo, dex_file, tmp_path):
    """The real wrapper's mask needs gradients through the frozen DEX VGG; ``G.forward`` draws a random blur per
    call (why the adapter runs the sub-modules itself, with fixed blurs)."""
    import torch
    import torch.nn.functional as F

    from generators.cusp import to_model_input
    from generators.registry import create_generator

    pkl = _build_snapshot(repo, tmp_path / "run", "rr", dex_file)
    gen = create_generator("cusp", checkpoint=pkl, repo=repo, trust_checkpoint=True, device="cpu",
                           dex=dex_file).load()
    vgg = gen.G.skip_grad_blur.model.classifier
    assert not any(p.requires_grad for p in vgg.parameters())
    assert torch.equal(vgg.fc8_101.weight, torch.load(dex_file, weights_only=True)["fc8-101.weight"])
    from agebias.data.align import ARCFACE_TEMPLATE
    from generators.ffhq_crop import ffhq_crop

    face = synthetic_face(ARCFACE_TEMPLATE, size=(112, 112), seed=3)
    img = to_model_input(ffhq_crop(face, ARCFACE_TEMPLATE, 224, 1.8))
    wrapper = gen.G.skip_grad_blur
    mask = gen.saliency(img)
    assert mask.shape == (1, 1, 224, 224) and float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    # the backward pass reached the input through the frozen VGG (no gradient would leave a mask of ones) and
    # the wrapper's Grad-CAM hooks on conv5_3 of the classifier in use fired
    assert float(mask.mean()) < 1.0
    assert wrapper.activations is not None and wrapper.activations.shape == (1, 512, 14, 14)
    assert wrapper.gradients is not None and float(wrapper.gradients.abs().sum()) > 0
    labels = torch.tensor([40])
    assert torch.equal(gen.edit(img, labels, mask), gen.edit(img, labels, mask))
    onehot = F.one_hot(labels, 101).float()
    first, second = (gen.G(img.clone(), onehot).detach() for _ in range(2))  # forward's saliency needs gradients
    assert not torch.equal(first, second)
    gen.close()
