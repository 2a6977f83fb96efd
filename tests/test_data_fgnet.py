"""FG-NET: every naming quirk, both layouts, .pts landmarks, `agebias datasets check`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agebias.cli import main
from agebias.data.align import ARCFACE_TEMPLATE
from agebias.data.faces import load_aligned_faces
from agebias.data.fgnet import five_from_68, parse_fgnet_name, read_pts, scan_fgnet
from agebias.data.sources import detect_kind, open_dataset
from agebias.errors import UserError
from helpers_faces import (FGNET_BAD_NAMES, FGNET_QUIRK_NAMES, landmarks68_for, landmarks68_xm2vts_for,
                           make_fgnet_tree, write_pts)


@pytest.mark.parametrize("name,expected", [
    ("001A02.JPG", ("001", 2, "")), ("001a02.jpg", ("001", 2, "")), ("010A07a.JPG", ("010", 7, "a")),
    ("001A43b.JPG", ("001", 43, "b")), ("082A69.jpeg", ("082", 69, "")), ("005A10.JpG", ("005", 10, "")),
    ("001_02.jpg", ("001", 2, "")), ("010_07a.JPG", ("010", 7, "a")),
])
def test_parse_names(name, expected):
    assert parse_fgnet_name(name) == expected


@pytest.mark.parametrize("name", FGNET_BAD_NAMES + ("001A02.png", "001A02", "x001A02.JPG", "001A002.JPG"))
def test_unparseable_names_are_none(name):
    assert parse_fgnet_name(name) is None


def test_pts_roundtrip_and_five_points(tmp_path):
    five = np.array([[30.0, 40], [70, 41], [50, 60], [35, 80], [66, 79]])
    pts = landmarks68_for(five)
    write_pts(tmp_path / "x.pts", pts)
    assert (tmp_path / "x.pts").read_text().startswith("version: 1\nn_points: 68\n{\n")
    back = read_pts(tmp_path / "x.pts")
    assert back.shape == (68, 2) and np.allclose(back, pts, atol=1e-3)
    assert np.allclose(five_from_68(back), five, atol=1e-2)
    (tmp_path / "bad.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises(ValueError):
        read_pts(tmp_path / "bad.pts")


def test_original_layout_with_every_quirk(tmp_path):
    truth = make_fgnet_tree(tmp_path / "fg")
    assert detect_kind(tmp_path / "fg") == "fgnet"
    scan = open_dataset(tmp_path / "fg")
    got = {str(r.path): (r.subject, r.age) for r in scan.records}
    assert got == {p: (s, a) for p, (s, a, _five) in truth.items()}
    assert scan.subjects == ["001", "010", "082"]
    assert len(scan.records) == len(FGNET_QUIRK_NAMES)
    # same-age duplicates are both kept and marked
    dup = [r for r in scan.records if r.path.name == "010A07a.JPG"][0]
    assert dup.extra["duplicate"] == "a" and dup.age == 7
    # names that do not parse are listed, never guessed
    assert sorted(Path(p.path).name for p in scan.problems) == sorted(FGNET_BAD_NAMES)
    # landmarks from .pts in FG-NET's own markup (pupils, nose tip, mouth corners)
    for r in scan.records:
        assert r.landmarks is not None and r.extra["landmarks_markup"] == "xm2vts"
        assert np.allclose(r.landmarks, truth[str(r.path)][2], atol=1e-2)


def test_root_at_images_folder_finds_sibling_points(tmp_path):
    make_fgnet_tree(tmp_path / "fg", bad_names=False)
    scan = scan_fgnet(tmp_path / "fg" / "images")
    assert len(scan.records) == 8 and all(r.landmarks is not None for r in scan.records)


def test_regrouped_layout(tmp_path):
    truth = make_fgnet_tree(tmp_path / "fg", regrouped=True)
    scan = open_dataset(tmp_path / "fg", "fgnet")
    assert {str(r.path): (r.subject, r.age) for r in scan.records} == {p: (s, a) for p, (s, a, _) in truth.items()}
    assert all(r.landmarks is None for r in scan.records)
    assert len(scan.problems) == len(FGNET_BAD_NAMES)


def test_landmark_alignment_puts_eyes_on_template(tmp_path):
    make_fgnet_tree(tmp_path / "fg", bad_names=False)
    scan = scan_fgnet(tmp_path / "fg")
    faces = load_aligned_faces(scan.records, detector="landmarks", cache_dir=tmp_path / "cache", progress=None)
    assert faces.crops.shape == (len(scan.records), 112, 112, 3) and not faces.skipped
    for crop in faces.crops:
        for tx, ty in ARCFACE_TEMPLATE[:2]:  # the dark dots drawn at the eyes
            x, y = int(round(tx)), int(round(ty))
            win = crop[y - 7:y + 8, x - 7:x + 8].astype(int).sum(2)
            ys, xs = np.nonzero(win < 200)
            assert abs(x - 7 + xs.mean() - tx) < 1.0 and abs(y - 7 + ys.mean() - ty) < 1.0
    # cached: same crops from the cache folder
    assert any((tmp_path / "cache").rglob("*.png"))
    again = load_aligned_faces(scan.records, detector="landmarks", cache_dir=tmp_path / "cache", progress=None)
    assert np.array_equal(again.crops, faces.crops)


def test_missing_root_is_user_error(tmp_path):
    with pytest.raises(UserError, match="datasets/README.md"):
        scan_fgnet(tmp_path / "missing")


def test_datasets_check_cli(tmp_path, capsys):
    make_fgnet_tree(tmp_path / "clean", bad_names=False)
    assert main(["datasets", "check", "fgnet", "--root", str(tmp_path / "clean")]) == 0
    out = capsys.readouterr().out
    assert "subjects: 3" in out and "images: 8" in out and "61+" in out
    make_fgnet_tree(tmp_path / "dirty")
    assert main(["datasets", "check", "fgnet", "--root", str(tmp_path / "dirty")]) == 1
    assert "images/001B02.JPG: file name does not match" in capsys.readouterr().out
    assert main(["datasets", "check", "fgnet", "--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "datasets/README.md" in err and "datasets/fgnet" in err
    (tmp_path / "empty").mkdir()
    for kind in ("fgnet", "generated", "folder"):  # an empty root is not a clean dataset
        assert main(["datasets", "check", kind, "--root", str(tmp_path / "empty")]) == 2
        assert "no face images found in" in capsys.readouterr().err


def test_datasets_check_json(tmp_path, capsys):
    import json

    make_fgnet_tree(tmp_path / "fg", bad_names=False)
    assert main(["datasets", "check", "fgnet", "--root", str(tmp_path / "fg"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 8 and summary["subjects"] == 3 and summary["with_landmarks"] == 8
    assert summary["per_age_bin"]["0-5"] == 2 and summary["per_age_bin"]["41-50"] == 2


def _ibug68(five: np.ndarray) -> np.ndarray:
    """A structured 68-point set in iBUG 300-W order (eyes 36-41 / 42-47 around the eye centres, nose bridge 27-30
    ending at the tip 30, nostrils 31-35, mouth 48-67 with corners 48 and 54)."""
    five = np.asarray(five, float)
    d = float(np.linalg.norm(five[1] - five[0]))
    pts = np.zeros((68, 2))
    centre = five[:2].mean(0)
    a = np.linspace(0, np.pi, 17)
    pts[0:17] = centre + np.stack([-1.1 * d * np.cos(a), 0.2 * d + 1.1 * d * np.sin(a)], 1)  # jaw
    pts[17:27] = centre + np.stack([np.linspace(-0.9 * d, 0.9 * d, 10), np.full(10, -0.35 * d)], 1)  # brows
    pts[27:31] = np.linspace(centre, five[2], 4)  # nose bridge down to the tip (30)
    pts[31:36] = five[2] + np.stack([np.linspace(-0.2 * d, 0.2 * d, 5), np.full(5, 0.1 * d)], 1)  # nostrils
    ring = np.stack([0.2 * d * np.cos(np.linspace(0, 2 * np.pi, 6, endpoint=False)),
                     0.07 * d * np.sin(np.linspace(0, 2 * np.pi, 6, endpoint=False))], 1)
    pts[36:42], pts[42:48] = five[0] + ring, five[1] + ring
    mouth_mid = (five[3] + five[4]) / 2
    pts[48:68] = mouth_mid + np.stack([np.linspace(-0.3 * d, 0.3 * d, 20), np.zeros(20)], 1)
    pts[48], pts[54] = five[3], five[4]
    return pts


def test_fgnet_pts_are_read_in_fgnets_own_markup_first():
    """FG-NET's .pts files follow Cootes's XM2VTS-style markup (pupils 31 and 36, nose tip 67, mouth corners 48 and
    54): that markup is tried first, and its points read as iBUG (eyes 36-47, tip 30) are not a face."""
    from agebias.data.fgnet import FGNET_MARKUPS, landmarks_from_68

    assert FGNET_MARKUPS == ("xm2vts", "ibug")
    five = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    pts = landmarks68_xm2vts_for(five)
    assert np.allclose(pts[[31, 36, 67, 48, 54]], five)
    got, markup = landmarks_from_68(pts)
    assert markup == "xm2vts" and np.allclose(got, five, atol=1e-6)
    assert landmarks_from_68(pts, markups=("ibug",))[0] is None
    # the eyes listed right-to-left are still put in ArcFace order (image-left eye first)
    swapped = pts.copy()
    swapped[[27, 28, 29, 30, 31, 32, 33, 34, 35, 36]] = pts[[32, 33, 34, 35, 36, 27, 28, 29, 30, 31]]
    assert np.allclose(landmarks_from_68(swapped)[0], five, atol=1e-6)


def test_ibug_pts_fall_back_and_other_layouts_go_to_a_detector(tmp_path):
    """iBUG-order files (re-annotated sets) are read by the fallback; a file that fits neither markup (here "eyes"
    taken from the mouth) is reported and its image left to a detector instead of being warped with wrong points."""
    from PIL import Image

    from agebias.data.fgnet import face_layout_problem, landmarks_from_68

    assert face_layout_problem(ARCFACE_TEMPLATE) is None
    rotated = ARCFACE_TEMPLATE @ np.array([[0.9, 0.3], [-0.3, 0.9]])  # a tilted face is still a face
    assert face_layout_problem(rotated) is None
    five = ARCFACE_TEMPLATE.astype(float)
    ibug = _ibug68(five)
    assert landmarks_from_68(ibug, markups=("xm2vts",))[0] is None  # iBUG points are not read as XM2VTS
    (tmp_path / "images").mkdir()
    for name in ("001A02.JPG", "001A05.JPG", "001A09.JPG"):
        Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(tmp_path / "images" / name)
    wrong = ibug.copy()
    wrong[36:48] = ibug[48:60]  # iBUG "eyes" read from the mouth
    write_pts(tmp_path / "points" / "001A02.pts", ibug)
    write_pts(tmp_path / "points" / "001A05.pts", wrong)
    write_pts(tmp_path / "points" / "001A09.pts", landmarks68_xm2vts_for(five))
    scan = scan_fgnet(tmp_path)
    by_age = {r.age: r for r in scan.records}
    assert by_age[2].extra["landmarks_markup"] == "ibug" and np.allclose(by_age[2].landmarks, five, atol=1e-3)
    assert by_age[9].extra["landmarks_markup"] == "xm2vts" and np.allclose(by_age[9].landmarks, five, atol=1e-3)
    assert by_age[5].landmarks is None
    assert len(scan.problems) == 1 and scan.problems[0].path.endswith("001A05.pts")
    assert "fit no known 68-point markup" in scan.problems[0].reason
