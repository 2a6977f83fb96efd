"""Embedders: preprocessing, batching, flip fusion, the spec registry, and the bundled SFace model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agebias.devices import resolve_device
from agebias.errors import UserError
from agebias.models.checkpoints import save_backbone
from agebias.models.embedder import Embedder, TorchEmbedder, build_embedder, l2_normalise
from agebias.models.preprocess import to_tensor
from agebias.models.registry import create_backbone

TINY = "iresnet:1,1,1,1@8,8,16,16"


def _images_dir() -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images"


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)


def test_to_tensor_convention():
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, :, :, 0] = 255  # red channel
    img[0, 0, 0, 2] = 51
    t = to_tensor(img)
    assert t.shape == (1, 3, 2, 2) and t.dtype == torch.float32
    assert torch.all(t[0, 0] == 1.0) and torch.all(t[0, 1] == -1.0)
    assert t[0, 2, 0, 0].item() == pytest.approx((51 / 255 - 0.5) / 0.5, abs=1e-7)
    assert to_tensor(img[0]).shape == (1, 3, 2, 2)  # single crop gets a batch axis
    with pytest.raises(UserError, match="uint8"):
        to_tensor(img.astype(np.float32))


def test_torch_embedder_batching_and_flip(faces):
    torch.manual_seed(0)
    model = create_backbone(TINY).eval()
    e = TorchEmbedder(model, device="cpu", batch_size=3)
    assert isinstance(e, Embedder) and e.dim == 512
    emb = e.embed(faces)
    assert emb.shape == (7, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one_batch = TorchEmbedder(model, device="cpu", batch_size=64).embed(faces)
    np.testing.assert_allclose(emb, one_batch, atol=1e-5)
    with torch.no_grad():
        raw = model(to_tensor(faces)).numpy()
        raw_flip = model(to_tensor(np.ascontiguousarray(faces[:, :, ::-1]))).numpy()
    np.testing.assert_allclose(emb, l2_normalise(raw), atol=1e-5)
    fused = TorchEmbedder(model, device="cpu", batch_size=4, flip=True).embed(faces)
    np.testing.assert_allclose(fused, l2_normalise(raw + raw_flip), atol=1e-5)
    assert np.abs(fused - emb).max() > 1e-3  # flip fusion changes the result
    assert e.embed(faces[:0]).shape == (0, 512)
    with pytest.raises(UserError, match="112x112"):
        e.embed(np.zeros((1, 100, 100, 3), np.uint8))


def test_build_embedder_specs(tmp_path, faces):
    torch.manual_seed(0)
    model = create_backbone(TINY).eval()
    path = save_backbone(model, tmp_path / "b.safetensors")
    e = build_embedder(path, device="cpu", batch_size=4)
    np.testing.assert_allclose(e.embed(faces), TorchEmbedder(model, device="cpu").embed(faces), atol=1e-6)
    assert e.name == "b.safetensors"
    with pytest.raises(UserError, match="random:iresnet50"):
        build_embedder("iresnet50")  # an architecture name alone is not a trained model
    assert build_embedder(f"random:{TINY}", device="cpu").dim == 512
    with pytest.raises(UserError, match="unknown model"):
        build_embedder("no-such-model")
    with pytest.raises(UserError, match="not found"):
        build_embedder(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="batch size"):
        build_embedder(path, batch_size=0)
    via_ort = build_embedder(path, device="cpu", backend="onnxruntime", flip=True)
    assert "onnxruntime" in via_ort.name and type(via_ort).__name__ == "OnnxEmbedder"
    ref = TorchEmbedder(model, device="cpu", flip=True).embed(faces)
    assert float((via_ort.embed(faces) * ref).sum(1).min()) >= 0.9999
    with pytest.raises(UserError, match="backend"):
        build_embedder(path, backend="tensorrt")


def test_device_resolution():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="device"):
        resolve_device("tpu-9")


def test_sface_tom_hanks():
    from PIL import Image

    tom = np.asarray(Image.open(_images_dir() / "Tom_Hanks_54745.png").convert("RGB"))
    assert tom.shape == (112, 112, 3)
    e = build_embedder("sface", device="cpu")
    assert e.name == "sface" and e.dim == 128
    emb = e.embed(tom[None])
    assert emb.shape == (1, 128) and emb.dtype == np.float32
    assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)
    assert e.fixed_batch is None  # the batch-1 file was relaxed to any batch, with identical results
    batch = np.stack([tom, tom[:, ::-1], np.roll(tom, 3, axis=1)])
    one_by_one = np.concatenate([e.embed(x[None]) for x in batch])
    np.testing.assert_allclose(e.embed(batch), one_by_one, atol=1e-5)


@pytest.mark.slow
def test_sface_same_person_scores_higher_than_different():
    """Real photos: each face vs a re-photographed copy of itself (other exposure, blur, shift) beats other people."""
    import cv2

    from agebias.data.faces import load_aligned_faces
    from agebias.data.records import FaceRecord

    images = _images_dir()
    found = load_aligned_faces([FaceRecord(images / "t1.jpg", "t1")], detector="mtcnn", all_faces=True,
                               cache_dir=False, progress=None)
    from PIL import Image

    tom = np.asarray(Image.open(images / "Tom_Hanks_54745.png").convert("RGB"))
    crops = np.concatenate([tom[None], found.crops])
    assert len(crops) >= 5
    other = np.clip(crops.astype(np.float32) * 0.8 + 20, 0, 255)
    other = np.stack([cv2.GaussianBlur(c, (3, 3), 0.8) for c in other])
    other = np.roll(other, 2, axis=2).astype(np.uint8)
    e = build_embedder("sface", device="cpu")
    sims = e.embed(crops) @ e.embed(other).T
    same = np.diag(sims)
    different = sims[~np.eye(len(sims), dtype=bool)]
    assert same.min() > 0.6 and different.max() < 0.5 and same.min() > different.max() + 0.2


@pytest.mark.slow
def test_timm_backbone_checkpoint_round_trip(tmp_path, faces):
    pytest.importorskip("timm")
    model = create_backbone("timm:resnet10t").eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 112, 112)).shape == (2, 512)
    path = save_backbone(model, tmp_path / "t.pth")
    e = build_embedder(path, arch="timm:resnet10t", device="cpu")
    np.testing.assert_allclose(e.embed(faces[:2]), TorchEmbedder(model, device="cpu").embed(faces[:2]), atol=1e-5)
    with pytest.raises(UserError, match="pass --arch"):
        build_embedder(path)  # timm keys are not an iresnet's: the arch must be named
    with pytest.raises(UserError, match="unknown timm model"):
        create_backbone("timm:no_such_net")


def test_arch_with_a_model_that_has_its_own_is_refused():
    from agebias.errors import UserError
    from agebias.models.embedder import build_embedder

    with pytest.raises(UserError, match="--arch applies to .pth/.safetensors"):
        build_embedder("sface", arch="iresnet50")
