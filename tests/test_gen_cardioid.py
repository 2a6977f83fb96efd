"""The cardioid generator and the `agebias generate` CLI (fast paths use the aligned Tom Hanks crop)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from agebias.cli import main
from agebias.errors import UserError
from generators.base import Identity
from agebias.data.align import template_for
from generators.cardioid import (CardioidGenerator, aligned_landmarks, cardioid_warp, head_centre, strain_for_age,
                                 warp_points)
from helpers_faces import astronaut_path, grace_hopper_path, insightface_image

TOM = insightface_image("Tom_Hanks_54745.png")


def _tom() -> np.ndarray:
    return np.asarray(Image.open(TOM).convert("RGB"))


def test_strain_grows_with_age():
    ks = [strain_for_age(a) for a in (0, 3, 8, 14, 18, 30, 60)]
    assert ks[0] == 0.0 and all(b > a for a, b in zip(ks, ks[1:], strict=False))


@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_warp_changes_lower_face_keeps_crown_and_identity():
    gen = CardioidGenerator(source_age=30)
    ident = Identity(id="tom", image=_tom())
    same = gen.generate_one(ident, 30).image
    assert np.array_equal(same, ident.image)  # source age -> unchanged
    imgs = {a: gen.generate_one(ident, a).image.astype(np.float32) for a in (3, 8, 14)}
    for a, b in ((3, 8), (8, 14), (3, 14)):
        assert np.abs(imgs[a] - imgs[b]).mean() > 2.0, (a, b)  # visibly different
    src = ident.image.astype(np.float32)
    # identity roughly kept: the warped face stays highly correlated with the source in the eye region
    eyes = slice(35, 70)
    corr = np.corrcoef(imgs[14][eyes].ravel(), src[eyes].ravel())[0, 1]
    assert corr > 0.8


def test_landmarks_after_cardioid_stay_on_the_template():
    """The strain moves the template points (30 -> 4: mouth corners 11.6 px up); re-aligning the output puts them
    back within 1 px of the template from age 3 up (a similarity cannot undo the change of proportions fully)."""
    tpl = template_for(112).astype(np.float64)
    k30 = strain_for_age(30)
    moved = warp_points(tpl, k30, strain_for_age(4), head_centre(112, 112)) - tpl
    assert moved[3:, 1] == pytest.approx([-11.55, -11.55], abs=0.05)  # mouth corners up (y down in images)
    assert moved[2, 1] == pytest.approx(-6.9, abs=0.05) and abs(moved[0, 0]) == pytest.approx(3.4, abs=0.05)
    worst = {age: float(np.linalg.norm(aligned_landmarks(tpl, k30, strain_for_age(age)) - tpl, axis=1).max())
             for age in range(0, 101)}
    assert max(v for a, v in worst.items() if a >= 3) < 1.0
    assert worst[4] == pytest.approx(0.86, abs=0.01) and max(v for a, v in worst.items() if a >= 14) < 0.2
    assert worst[0] == pytest.approx(1.74, abs=0.01)  # the youngest ages keep the eyes within 1.75 px


def _landmark_blobs(size: int = 112) -> np.ndarray:
    """A grey crop with a dark Gaussian blob on each of the five template points."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.full((size, size), 200.0)
    for x, y in template_for(size):
        img -= 150.0 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0 ** 2))
    return np.repeat(np.clip(img, 0, 255).round().astype(np.uint8)[:, :, None], 3, axis=2)


def _blob_centres(img: np.ndarray) -> np.ndarray:
    """Darkness-weighted centroid of each blob, searched within 6 px of its template point."""
    w = 200.0 - img[:, :, 0].astype(np.float64)
    ys, xs = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float64)
    out = []
    for x, y in template_for(img.shape[0]):
        m = np.clip(w, 0, None) * ((xs - x) ** 2 + (ys - y) ** 2 <= 36)
        out.append([(m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()])
    return np.array(out)


def test_cardioid_output_is_aligned_like_a_real_crop():
    gen = CardioidGenerator(source_age=30)
    ident = Identity(id="dots", image=_landmark_blobs())
    tpl = template_for(112)
    for age in (4, 8, 60):
        out = gen.generate_one(ident, age).image
        assert np.linalg.norm(_blob_centres(out) - tpl, axis=1).max() < 1.0, age
    same = cardioid_warp(ident.image, strain_for_age(30), strain_for_age(30))  # no strain change: the crop itself
    assert np.linalg.norm(_blob_centres(same) - tpl, axis=1).max() < 0.3


def test_out_of_range_age_and_bad_options():
    gen = CardioidGenerator()
    with pytest.raises(UserError, match="outside this model's range 0-100"):
        gen.check_ages([5, 120])
    with pytest.raises(UserError, match="not used by this generator: checkpoint"):
        CardioidGenerator(checkpoint="x.pkl")
    with pytest.raises(UserError):
        CardioidGenerator(source_age=150)


def test_warp_is_smooth_identity_at_equal_strain():
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    assert np.abs(cardioid_warp(img, 0.2, 0.2).astype(int) - img).max() <= 1


@pytest.mark.skipif(TOM is None, reason="insightface test image not installed")
def test_cli_aligned_sources(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(TOM, src / "Tom Hanks (1).png")  # id gets sanitised
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--method", "cardioid", "--sources", str(src), "--aligned-sources", "--ages", "3,8,14",
               "--out", str(out)])
    assert rc == 0
    ident = "Tom_Hanks_1"
    for a in (3, 8, 14):
        assert (out / ident / f"{ident}_{a}.png").is_file()
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 3 and '"geometry_only": true' in rows[0]["parameters"]
    assert (out / "contact_sheet.png").is_file()
    # rerun: nothing regenerated
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if p.parent != out}
    assert main(["-q", "generate", "--method", "cardioid", "--sources", str(src), "--aligned-sources", "--ages", "3,8,14",
                 "--out", str(out)]) == 0
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if p.parent != out}


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "--method", "nope", "--identities", "2", "--ages", "5", "--out", str(out)]) == 2
    assert "--method: unknown value 'nope'" in _err_line(capsys)
    assert main(["generate", "--method", "eg3d", "--identities", "2", "--ages", "5", "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert "eg3d" in line and "--checkpoint" in line
    assert main(["generate", "--method", "cardioid", "--identities", "2", "--ages", "5", "--out", str(out)]) == 2
    assert "--identities: cardioid edits real faces: use sources" in _err_line(capsys)
    assert main(["generate", "--method", "cardioid", "--sources", str(tmp_path), "--ages", "5,130",
                 "--out", str(out)]) == 2
    assert "outside" in _err_line(capsys)
    assert main(["generate", "--method", "cardioid", "--sources", str(tmp_path / "missing"), "--ages", "5",
                 "--out", str(out)]) == 2
    assert "not found" in _err_line(capsys)
    assert not out.exists()  # nothing half-written


def test_cli_bad_device_and_batch_size_one_line_exit_2(tmp_path, capsys):
    """An unknown --device used to reach MTCNN and end in a torch traceback; --batch-size 0 was accepted."""
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(src / "a.png")
    out = tmp_path / "out"
    base = ["generate", "--method", "cardioid", "--sources", str(src), "--ages", "5", "--out", str(out)]
    assert main(base + ["--device", "banana"]) == 2
    assert "unknown device" in _err_line(capsys)
    assert main(base + ["--batch-size", "0"]) == 2
    assert "--batch-size" in _err_line(capsys)
    assert not out.exists()
    out.write_text("a file")  # --out naming a file ended in FileExistsError
    assert main(base) == 2
    assert "is a file" in _err_line(capsys)


def test_cli_source_without_face_reports_skip(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(src / "blank.png")
    out = tmp_path / "out"
    assert main(["generate", "--method", "cardioid", "--sources", str(src), "--ages", "5", "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no usable face" in line and "no face found" in line
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(TOM is None or grace_hopper_path() is None, reason="package photos not installed")
def test_acceptance_real_photos_mtcnn(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(insightface_image("t1.jpg"), src / "t1.jpg")
    shutil.copy(grace_hopper_path(), src / "grace_hopper.jpg")
    astronaut_path(src)
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(src / "blank.png")  # one bad source
    out = tmp_path / "out"
    rc = main(["-q", "generate", "--method", "cardioid", "--sources", str(src), "--ages", "3,8,14",
               "--out", str(out)])
    assert rc == 1  # finished, with one reported skip
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    ids = {r["id"] for r in rows}
    assert ids == {"t1", "grace_hopper", "astronaut"}
    assert len(rows) == 9
    for ident in ids:
        imgs = [np.asarray(Image.open(out / ident / f"{ident}_{a}.png"), dtype=np.float32) for a in (3, 8, 14)]
        assert imgs[0].shape == (112, 112, 3)
        assert np.abs(imgs[0] - imgs[2]).mean() > 2.0
    import json

    info = json.loads((out / "generation.json").read_text())
    assert [s["reason"] for s in info["skipped"]] == ["no face found"]
    assert (out / "contact_sheet.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(insightface_image("t1.jpg") is None, reason="insightface test image not installed")
def test_all_faces_of_a_group_photo(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(insightface_image("t1.jpg"), src / "t1.jpg")
    out = tmp_path / "out"
    assert main(["-q", "generate", "--sources", str(src), "--all-faces", "--ages", "6", "--out", str(out)]) == 0
    ids = sorted({r["id"] for r in csv.DictReader(open(out / "manifest.csv"))})
    assert ids == [f"t1_face{i}" for i in range(6)]  # six people, left to right
