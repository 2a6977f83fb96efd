"""`--protocol msc` reproduces the MSc thesis evaluation, input path included: whole photos squashed to 112x112
exactly as its torchvision 0.10 transform did, 40 thresholds, every decodable image used."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agebias.cli import main
from agebias.data.faces import load_aligned_faces
from agebias.data.fgnet import scan_fgnet, thesis_organiser_moves
from agebias.data.squash import decode_like_imagefolder, squash_image, thesis_input
from agebias.evaluate.msc import THRESHOLDS
from agebias.evaluate.settings import EmbedSettings, embed_for_protocol
from agebias.models.preprocess import to_tensor

TINY = "iresnet:1,1,1,1@8,8,16,16"


def _thesis_transform(antialias):
    """The thesis's test transform, as its evaluate_fine_tuned_model.py builds it; ``antialias`` is what
    torchvision's Resize did to tensors in a given release (False up to 0.16, True from 0.17)."""
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
                               transforms.Resize((112, 112), antialias=antialias)])


def test_squash_is_the_thesis_transform_with_torchvision_010_resize():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (150, 131, 3), dtype=np.uint8)  # a small non-square photo, downscaled
    pil = Image.fromarray(rgb)
    thesis = _thesis_transform(antialias=False)(pil)  # torchvision 0.10 (pinned by the thesis): no antialias
    assert torch.equal(thesis_input(rgb), thesis)  # bit for bit, in the thesis's order (ToTensor, Normalize, Resize)
    ours = to_tensor(squash_image(rgb))[0]  # the uint8 crop every embedder takes, through the ArcFace input
    assert float((ours - thesis).abs().max()) <= 1 / 255 + 1e-6
    # torchvision >= 0.17 antialiases tensors by default: that would be a different input entirely
    today = _thesis_transform(antialias=True)(pil)
    assert float((today - thesis).abs().max()) > 0.3
    # upscaling a small image too (every FG-NET photo is resized whatever its size)
    small = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert float((to_tensor(squash_image(small))[0] - _thesis_transform(False)(Image.fromarray(small))).abs().max()) \
        <= 1 / 255 + 1e-6


def test_files_are_read_as_imagefolder_reads_them():
    rng = np.random.default_rng(1)
    grey = Image.fromarray(rng.integers(0, 256, (20, 16), dtype=np.uint8), "L")
    rgba = Image.fromarray(rng.integers(0, 256, (20, 16, 4), dtype=np.uint8), "RGBA")
    for img, fmt in ((grey, "JPEG"), (rgba, "PNG")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))  # ImageFolder's pil_loader
        assert np.array_equal(decode_like_imagefolder(buf.getvalue(), "x"), expected)


def test_squash_never_skips_a_decodable_image(tmp_path):
    from agebias.data.records import FaceRecord

    rng = np.random.default_rng(2)
    paths = []
    for name, shape in (("noise.png", (90, 70, 3)), ("tiny.png", (5, 7, 3)), ("crop.png", (112, 112, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
        paths.append(tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    records = [FaceRecord(path=p, subject="s", age=1) for p in [*paths, tmp_path / "broken.jpg"]]
    faces = load_aligned_faces(records, detector="squash", cache_dir=False, progress=None)
    assert [r.path.name for r in faces.records] == ["noise.png", "tiny.png", "crop.png"]
    assert {r.extra["prepared"] for r in faces.records} == {"squash"} and faces.crops.shape == (3, 112, 112, 3)
    assert [s.path for s in faces.skipped] == [str(tmp_path / "broken.jpg")]
    crop = np.asarray(Image.open(paths[2]))
    assert np.array_equal(faces.crops[2], crop)  # a 112x112 image is left exactly as it is


def test_auto_detector_means_squash_under_msc_only():
    auto = EmbedSettings()
    msc, rule = embed_for_protocol(auto, "msc")
    assert msc.detector == "squash" and "squash" in rule and auto.detector == "auto"
    assert embed_for_protocol(auto, "all-pairs")[0].detector == "auto"
    assert embed_for_protocol(EmbedSettings(detector="landmarks"), "msc")[0].detector == "landmarks"  # aligning
    assert embed_for_protocol(EmbedSettings(aligned=True), "msc")[0].detector == "auto"  # used as given


def test_thresholds_are_the_thesis_arange():
    assert len(THRESHOLDS) == 40 and THRESHOLDS[0] == 0.0 and THRESHOLDS[-1] == pytest.approx(0.975)
    assert np.array_equal(THRESHOLDS, np.arange(0, 1, 0.025))


def test_thesis_organiser_rule():
    assert thesis_organiser_moves("001A02.JPG") and thesis_organiser_moves("010A07a.JPG")
    assert not thesis_organiser_moves("001A02.jpg")  # left behind: ImageFolder never saw it
    assert not thesis_organiser_moves("001a02.JPG")  # split at 'A' fails (IndexError in the thesis's code)


def _fgnet_noise(root: Path) -> int:
    """FG-NET-named noise photos of 4 subjects (no detector can find a face in them)."""
    rng = np.random.default_rng(3)
    n = 0
    root.mkdir(parents=True)
    for s in range(1, 5):
        for age in (6, 9, 12, 14, 18, 25, 28, 50, 55, 60):
            ext = ".jpg" if (s, age) == (4, 60) else ".JPG"  # one lower-case extension
            a = "a" if (s, age) == (3, 55) else "A"  # one lower-case 'a'
            Image.fromarray(rng.integers(0, 256, (120 + s, 100, 3), dtype=np.uint8)).save(
                root / f"{s:03d}{a}{age:02d}{ext}", format="JPEG")
            n += 1
    return n


def test_cli_msc_runs_on_fgnet_named_photos_without_faces(tmp_path):
    from agebias.models.checkpoints import save_backbone
    from agebias.models.registry import create_backbone

    torch.manual_seed(0)
    model = save_backbone(create_backbone(TINY).eval(), tmp_path / "tiny.pth")
    n = _fgnet_noise(tmp_path / "fgnet")
    assert len(scan_fgnet(tmp_path / "fgnet").records) == n
    out = tmp_path / "out"
    rc = main(["-q", "evaluate", "fgnet", "--root", str(tmp_path / "fgnet"), "--model", str(model), "--arch", TINY,
               "--device", "cpu", "--protocol", "msc", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    ds = res["dataset"]
    assert ds["n_records"] == n and ds["skipped"] == []  # every image used
    assert ds["preparation"]["methods"] == {"squash": n} and "squash" in ds["preparation"]["detector_rule"]
    sec = res["models"]["tiny"]
    sw = sec["garbe_sweep"]
    assert len(sw["threshold"]) == 40 and sw["threshold"][-1] == pytest.approx(0.975)
    assert sec["organiser"]["would_leave_out"] == 2  # 004A60.jpg and 003a55.JPG
    assert "squashed whole" in (out / "report.md").read_text()
