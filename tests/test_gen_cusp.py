"""Contract tests of the cusp adapter against a stand-in CUSP checkout whose pickled ``G_ema`` has the upstream
API (``content_enc``, ``style_enc``, ``style_map``, ``attr_map`` with ``fc0.init_args``, ``image_dec``,
``skip_transf``, ``_batch_blur``, ``__interleave_attr_style__``, ``skip_grad_blur.model.classifier``) and a VGG
class taking DEX keys with '-' replaced by '_'."""

from __future__ import annotations

import csv
import json
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch

from agebias.errors import UserError
from generators.base import Identity
from generators.checkout import purge_modules
from generators.registry import create_generator
from generators.writer import generate_to

NETWORKS = '''
import torch
import torch.nn.functional as F
from itertools import chain

def identity(c):
    return c

class VGG(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1_1 = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.fc8_101 = torch.nn.Linear(2, 101)

    def forward(self, x):
        h = F.relu(self.conv1_1(x)).mean((2, 3))
        return self.fc8_101(h)

class FC(torch.nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.init_args = (in_dim, out_dim)
        self.lin = torch.nn.Linear(in_dim, out_dim)

class Mapping(torch.nn.Module):
    def __init__(self, z_dim, num_ws, w_dim=4):
        super().__init__()
        self.z_dim, self.num_ws = z_dim, num_ws
        self.fc0 = FC(z_dim, w_dim)
        self.calls = []

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None):
        self.calls.append((z.detach().cpu().numpy().copy(), c, truncation_psi, truncation_cutoff))
        return self.fc0.lin(z)[:, None, :].repeat(1, self.num_ws, 1)

class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.calls = []

    def forward(self, img):
        self.calls.append(img.detach().cpu().numpy().copy())
        a = self.conv(img)
        b = F.avg_pool2d(a, 2)
        return b, [b, a]   # (out, skips) as upstream's ImageEncoder

class Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.to_rgb = torch.nn.Conv2d(4, 3, 1)

    def forward(self, skips, w):
        x = skips[1] + F.interpolate(skips[0], scale_factor=2)
        return torch.tanh(self.to_rgb(x) + w.mean((1, 2))[:, None, None, None])

class Saliency(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.classifier = None
        self.grad_enabled = []
        self.batches = []
        self.hooked = None

    def register_hooks(self):   # upstream re-registers its Grad-CAM hooks on the current classifier
        self.hooked = self.model.classifier

    def __call__(self, x):
        assert self.hooked is self.model.classifier, "hooks not registered on the classifier in use"
        self.grad_enabled.append(torch.is_grad_enabled())
        self.batches.append(x.shape[0])
        x.requires_grad = True
        loss = self.model.classifier(x).sum()
        loss.backward()   # upstream's GradiendtClassifierWrapper back-propagates too
        g = x.grad.abs().mean(1, keepdim=True)
        return (g / (g.amax((2, 3), keepdim=True) + 1e-12)).detach()

class StandInCUSP(torch.nn.Module):
    def __init__(self, res=32, attr_dim=101):
        super().__init__()
        self.img_resolution = res
        self.content_enc = Encoder()
        self.style_enc = Encoder()
        self.style_map = Mapping(4, 4)
        self.attr_map = Mapping(attr_dim, 2)
        self.image_dec = Decoder()
        self.skip_transf = [None, identity]   # second skip passes through (identity), as upstream
        self.skip_grad_blur = Saliency()
        self.blur_calls = []

    def __interleave_attr_style__(self, a_out, s_out):
        return torch.cat(list(chain.from_iterable(zip(a_out.split(1, dim=1), s_out.split(2, dim=1)))), dim=1)

    def _batch_blur(self, act, blur_val=None):
        self.blur_calls.append(blur_val)
        return F.avg_pool2d(act, 3, 1, 1)
'''

LEGACY = '''
import pickle
import dnnlib

def load_network_pkl(f, force_fp16=False):
    return pickle.load(f)
'''


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "cusp"
    for pkg in ("dnnlib", "torch_utils", "training"):
        (root / pkg).mkdir(parents=True, exist_ok=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "training" / "networks.py").write_text(textwrap.dedent(NETWORKS))
    (root / "legacy.py").write_text(textwrap.dedent(LEGACY))
    purge_modules()
    sys.path.insert(0, str(root))
    try:
        from training.networks import VGG, StandInCUSP

        torch.manual_seed(0)
        for name, kw in (("rr.pkl", {"res": 32, "attr_dim": 101}), ("ls.pkl", {"res": 32, "attr_dim": 10}),
                         ("ls12.pkl", {"res": 32, "attr_dim": 12})):
            with open(tmp_path / name, "wb") as fh:
                pickle.dump({"G_ema": StandInCUSP(**kw)}, fh)
        dex = {k.replace("fc8_101", "fc8-101"): v for k, v in VGG().state_dict().items()}
        torch.save(dex, tmp_path / "dex_imdb_wiki.caffemodel.pt")
    finally:
        sys.path.remove(str(root))
        purge_modules()
    yield root
    purge_modules()


def _faces(n=2):
    rng = np.random.default_rng(0)
    return [Identity(id=f"face{i}", seed=i, image=(rng.random((112, 112, 3)) * 255).astype(np.uint8),
                     source=f"/photos/face{i}.jpg") for i in range(n)]


def _png(path):
    from PIL import Image

    return np.asarray(Image.open(path))


def test_rr_pipeline_onehot_blur_mask_layout(checkout, tmp_path):
    gen = create_generator("cusp", checkpoint=tmp_path / "rr.pkl", repo=checkout, trust_checkpoint=True,
                           device="cpu", variant="rr", batch_size=4)
    gen.load()
    assert gen.side == 32  # the network's own resolution (a real RR model is 224)
    out = tmp_path / "out"
    faces = _faces(2)
    res = generate_to(out, gen, faces, [25, 40, 65])
    assert res.written == 6 and not res.warnings
    G = gen.G
    one_hots = np.concatenate([c[0] for c in G.attr_map.calls])
    assert one_hots.shape == (6, 101)
    assert np.array_equal(one_hots.argmax(1), [25, 40, 65, 25, 40, 65]) and np.allclose(one_hots.sum(1), 1)
    assert all(c[1] is None and c[2] == 1 and c[3] is None for c in G.attr_map.calls + G.style_map.calls)
    assert G.blur_calls == [0.2, 0.8, 0.2, 0.8]  # per batch: global blur, then the mask blur of the blurred skip
    # the DEX saliency runs with gradients on, once per source face (batches: [face0, face1], then none new)
    assert all(G.skip_grad_blur.grad_enabled) and G.skip_grad_blur.batches == [2]
    x = G.content_enc.calls[0]
    from agebias.data.align import template_for
    from generators.ffhq_crop import ffhq_crop

    crop = ffhq_crop(faces[0].image, template_for(112), 32, 1.8)  # restricted range: FFHQ's crop (factor 1.8)
    assert x.shape == (4, 3, 32, 32) and np.allclose(x[0], crop.transpose(2, 0, 1) / 128.0 - 1.0)
    vgg = G.skip_grad_blur.model.classifier
    dex = torch.load(tmp_path / "dex_imdb_wiki.caffemodel.pt", weights_only=True)
    assert torch.equal(vgg.fc8_101.weight, dex["fc8-101.weight"])  # '-' -> '_' keys loaded
    assert not any(p.requires_grad for p in vgg.parameters())
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [(r["id"], r["age"]) for r in rows][:3] == [("face0", "25"), ("face0", "40"), ("face0", "65")]
    assert rows[0]["source"] == "/photos/face0.jpg" and rows[0]["method"] == "cusp"
    p = json.loads(rows[0]["parameters"])
    assert p["global_blur"] == 0.2 and p["mask_blur"] == 0.8 and p["variant"] == "rr" and p["age_class"] == 25
    assert "factor 1.8" in p["crop"]
    assert (out / "face1" / "face1_65.png").is_file()
    # deterministic: a second run of the same plan gives the same pixels; other ages give other pixels
    again = create_generator("cusp", checkpoint=tmp_path / "rr.pkl", repo=checkout, trust_checkpoint=True,
                             device="cpu", batch_size=1)
    generate_to(tmp_path / "out2", again, faces, [25, 40])
    assert np.array_equal(_png(out / "face0" / "face0_25.png"), _png(tmp_path / "out2" / "face0" / "face0_25.png"))
    assert not np.array_equal(_png(out / "face0" / "face0_25.png"), _png(out / "face0" / "face0_40.png"))


def test_rr_range_and_lifespan_groups_and_crop(checkout, tmp_path):
    gen = create_generator("cusp", checkpoint=tmp_path / "rr.pkl", repo=checkout, trust_checkpoint=True,
                           device="cpu")
    with pytest.raises(UserError, match="outside this model's range 20-65"):
        gen.check_ages([10, 30])
    assert gen.variant == "rr"
    gen = create_generator("cusp", checkpoint=tmp_path / "ls.pkl", repo=checkout, trust_checkpoint=True,
                           device="cpu")
    gen.load()
    assert gen.variant == "ls"
    faces = _faces(1)
    res = generate_to(tmp_path / "ls", gen, faces, [1, 5, 12, 35, 80])
    assert res.warnings and "our reading" in res.warnings[0]
    one_hots = np.concatenate([c[0] for c in gen.G.attr_map.calls])
    assert one_hots.shape == (5, 10) and np.array_equal(one_hots.argmax(1), [0, 1, 3, 6, 9])
    rows = list(csv.DictReader(open(tmp_path / "ls" / "manifest.csv")))
    assert [json.loads(r["parameters"])["age_group"] for r in rows] == ["0-2", "3-6", "10-14", "30-39", "70+"]
    from agebias.data.align import template_for
    from generators.ffhq_crop import ffhq_crop

    x = gen.G.content_enc.calls[0][0]  # lifespan: FFHQ-Aging's larger crop (factor 2.2)
    assert np.allclose(x, ffhq_crop(faces[0].image, template_for(112), 32, 2.2).transpose(2, 0, 1) / 128.0 - 1.0)
    assert not np.allclose(x, ffhq_crop(faces[0].image, template_for(112), 32, 1.8).transpose(2, 0, 1) / 128.0 - 1)


def test_class_count_must_match_the_variant(checkout, tmp_path):
    from agebias.errors import ModelError

    with pytest.raises(ModelError, match="12 classes .* variant ls expects 10"):
        create_generator("cusp", checkpoint=tmp_path / "ls12.pkl", repo=checkout, trust_checkpoint=True,
                         device="cpu").load()
    with pytest.raises(ModelError, match="10 classes .* variant rr expects 101"):
        create_generator("cusp", checkpoint=tmp_path / "ls.pkl", repo=checkout, trust_checkpoint=True,
                         device="cpu", variant="rr").load()


def test_crop_factor_depends_on_the_variant():
    from generators.cusp import crop_factor
    from generators.ffhq_crop import ffhq_unit_template

    assert crop_factor("rr") == 1.8 and crop_factor("ls") == 2.2
    t18, t22 = ffhq_unit_template(1.8), ffhq_unit_template(2.2)
    # on the ArcFace template the eye-to-mouth term sets the crop size, so the face shrinks by 1.8 / 2.2
    eyes = lambda t: np.linalg.norm(t[1] - t[0])
    assert abs(eyes(t22) / eyes(t18) - 1.8 / 2.2) < 1e-9
    for t in (t18, t22):  # both centred on eye_centre + 0.1 eye_to_mouth, FFHQ's rule
        eye_c, mouth_c = t[:2].mean(0), t[3:].mean(0)
        assert np.allclose(eye_c + 0.1 * (mouth_c - eye_c), [0.5, 0.5], atol=1e-6)


def test_experiment_file_aliases(checkout, tmp_path):
    dex = tmp_path / "dex_imdb_wiki.caffemodel.pt"
    gen = create_generator("cusp", checkpoint=tmp_path / "rr.pkl", repo=checkout, trust_checkpoint=True,
                           dex_weights=dex, blur_global=0.1, blur_mask=0.9, variant="rr")
    p = gen.parameters()
    assert p["dex"] == str(dex) and p["global_blur"] == 0.1 and p["mask_blur"] == 0.9


def test_cusp_errors(checkout, tmp_path):
    with pytest.raises(UserError, match="--trust-checkpoint"):
        create_generator("cusp", checkpoint=tmp_path / "rr.pkl", repo=checkout)
    with pytest.raises(UserError, match="needs a CUSP generator pickle"):
        create_generator("cusp", repo=checkout)
    with pytest.raises(UserError, match="checkout not found"):
        create_generator("cusp", checkpoint=tmp_path / "rr.pkl", repo=tmp_path / "none", trust_checkpoint=True)
    (tmp_path / "dex_imdb_wiki.caffemodel.pt").unlink()
    with pytest.raises(UserError, match="DEX weights"):
        create_generator("cusp", checkpoint=tmp_path / "rr.pkl", repo=checkout, trust_checkpoint=True)


def test_ffhq_crop_template_lands_on_points():
    from agebias.data.align import template_for
    from generators.ffhq_crop import FFHQ_UNIT_TEMPLATE, ffhq_crop, similarity

    pts = template_for(112).astype(np.float64)
    m = similarity(pts, FFHQ_UNIT_TEMPLATE * 224)
    mapped = pts @ m[:, :2].T + m[:, 2]
    assert np.allclose(mapped, FFHQ_UNIT_TEMPLATE * 224, atol=1e-6)
    # eyes at FFHQ height (~0.47 of the side), mouth at ~0.75
    assert abs(FFHQ_UNIT_TEMPLATE[0, 1] - 0.472) < 0.01 and abs(FFHQ_UNIT_TEMPLATE[3, 1] - 0.75) < 0.01
    img = np.zeros((112, 112, 3), np.uint8)
    img[45:58, 30:82] = 255  # a bright eye band
    crop = ffhq_crop(img, pts, 224)
    assert crop.shape == (224, 224, 3)
    assert crop[int(0.472 * 224), 112].mean() > 200  # the eye band lands on the template's eye line
