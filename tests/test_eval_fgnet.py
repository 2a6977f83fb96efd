"""`agebias evaluate fgnet --model sface` end to end on an FG-NET-named tree of real package-shipped photos."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from helpers_faces import grace_hopper_path, insightface_image

from agebias.cli import main

pytestmark = pytest.mark.slow


def _faces() -> list[Image.Image]:
    """Face regions (with margin) cut from the real photos shipped in installed packages."""
    from skimage import data

    from agebias.data.detect import detect_faces

    sources = []
    t1 = insightface_image("t1.jpg")
    if t1 is not None:
        sources.append(np.asarray(Image.open(t1).convert("RGB")))
    gh = grace_hopper_path()
    if gh is not None:
        sources.append(np.asarray(Image.open(gh).convert("RGB")))
    sources.append(data.astronaut())
    crops = []
    for img in sources:
        for det in detect_faces(img):
            x1, y1, x2, y2 = det.box
            cx, cy, s = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 1.1
            box = (int(max(cx - s, 0)), int(max(cy - s, 0)), int(min(cx + s, img.shape[1])),
                   int(min(cy + s, img.shape[0])))
            crops.append(Image.fromarray(img).crop(box))
    return crops


def _fgnet_tree(root: Path) -> int:
    """Subject k = face k; four 'ages' made from one photo (as is, mirrored, darker, slightly rotated)."""
    images = root / "images"
    images.mkdir(parents=True)
    faces = _faces()
    for k, face in enumerate(faces, start=1):
        face = face.resize((160, int(160 * face.height / face.width)))
        variants = [face, face.transpose(Image.FLIP_LEFT_RIGHT), ImageEnhance.Brightness(face).enhance(0.7),
                    face.rotate(6, resample=Image.BILINEAR)]
        for age, img in zip((5, 16, 31, 52), variants, strict=True):
            img.save(images / f"{k:03d}A{age:02d}.JPG", quality=92)
    return len(faces)


def test_fgnet_sface_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    monkeypatch.setenv("AGEBIAS_CACHE", str(tmp_path / "cache"))
    n_subjects = _fgnet_tree(tmp_path / "fgnet")
    assert n_subjects >= 6
    out = tmp_path / "out"
    rc = main(["evaluate", "fgnet", "--root", str(tmp_path / "fgnet"), "--model", "sface", "--out", str(out),
               "--bootstrap", "100", "--target-fmr", "0.01"])
    assert rc in (0, 1)
    full = json.loads((out / "results.json").read_text())
    assert full["dataset"]["name"] and "landmarks" not in full["dataset"]["preparation"]["methods"]
    assert "detected with MTCNN" in full["dataset"]["preparation"]["summary"]
    res = full["models"]["sface"]
    assert res["data"]["n_subjects"] >= 6
    o = res["overall"]
    assert res["data"]["n_genuine"] >= 6 * 6 - 6  # some faces may be skipped by the aligner
    assert o["mean_genuine"] > o["mean_impostor"] + 0.2  # a real model separates real faces
    assert o["auc"] > 0.9
    for lab in ("0-12", "13-19", "20-39", "40-69"):
        assert lab in res["groups"]
    assert res["identification"]["groups"]["overall"]["n_probes"] > 0
    for stem in ("score_distributions", "genuine_vs_age_gap", "det", "fairness_vs_fmr", "group_rates",
                 "impostor_heatmap"):
        assert (out / "plots" / f"{stem}.png").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "sface" in html
    assert (out / "embeddings" / "sface.npz").exists()
    # a second run reuses the cached embeddings and gives the same numbers
    rc = main(["evaluate", "fgnet", "--root", str(tmp_path / "fgnet"), "--model", "sface", "--out", str(out),
               "--bootstrap", "100", "--target-fmr", "0.01", "--no-plots"])
    assert json.loads((out / "results.json").read_text())["models"]["sface"]["overall"]["eer"] == o["eer"]
