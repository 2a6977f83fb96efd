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
from helpers_faces import FGNET_BAD_NAMES, FGNET_QUIRK_NAMES, landmarks68_for, make_fgnet_tree, write_pts


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
    # landmarks from .pts (eye centres, nose tip, mouth corners)
    for r in scan.records:
        assert r.landmarks is not None
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


def test_datasets_check_json(tmp_path, capsys):
    import json

    make_fgnet_tree(tmp_path / "fg", bad_names=False)
    assert main(["datasets", "check", "fgnet", "--root", str(tmp_path / "fg"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 8 and summary["subjects"] == 3 and summary["with_landmarks"] == 8
    assert summary["per_age_bin"]["0-5"] == 2 and summary["per_age_bin"]["41-50"] == 2


def test_pts_in_another_68_point_convention_falls_back_to_a_detector(tmp_path):
    """A .pts file whose points 36-47 / 30 are not the eyes / nose tip (e.g. a pupil-based 68-point markup) was
    used as is, warping the face with wrong points; it is now reported and the image left to a detector."""
    from PIL import Image

    from agebias.data.fgnet import face_layout_problem

    assert face_layout_problem(ARCFACE_TEMPLATE) is None
    rotated = ARCFACE_TEMPLATE @ np.array([[0.9, 0.3], [-0.3, 0.9]])  # a tilted face is still a face
    assert face_layout_problem(rotated) is None
    (tmp_path / "images").mkdir()
    for name in ("001A02.JPG", "001A05.JPG"):
        Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(tmp_path / "images" / name)
    good = landmarks68_for(ARCFACE_TEMPLATE)
    wrong = good.copy()
    wrong[36:48] = good[[48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59]]  # "eyes" read from the mouth
    write_pts(tmp_path / "points" / "001A02.pts", good)
    write_pts(tmp_path / "points" / "001A05.pts", wrong)
    scan = scan_fgnet(tmp_path)
    by_age = {r.age: r for r in scan.records}
    assert by_age[2].landmarks is not None and by_age[5].landmarks is None
    assert len(scan.problems) == 1 and scan.problems[0].path.endswith("001A05.pts")
    assert "fit no known 68-point markup" in scan.problems[0].reason
    assert by_age[2].extra["landmarks_markup"] == "ibug"


def test_xm2vts_markup_pts_is_recognised(tmp_path):
    """Older Manchester annotations use Cootes's XM2VTS/MUCT 68-point markup (pupils 31 and 36, nose tip 67)."""
    five = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    pts = np.zeros((68, 2))
    pts[0:15] = np.stack([np.linspace(20, 92, 15), 60 + 40 * np.sin(np.linspace(0, np.pi, 15))], 1)  # jaw
    pts[27:31] = five[0] + [[-8, 0], [0, -3], [8, 0], [0, 3]]  # eye corners and lids around the pupil
    pts[31] = five[0]
    pts[32:36] = five[1] + [[8, 0], [0, -3], [-8, 0], [0, 3]]
    pts[36] = five[1]
    pts[37:48] = five[2] + np.stack([np.linspace(-6, 6, 11), np.linspace(-15, 2, 11)], 1)  # nose
    pts[48:66] = (five[3] + five[4]) / 2 + np.stack([np.linspace(-14, 14, 18), np.zeros(18)], 1)
    pts[48], pts[54] = five[3], five[4]
    pts[66] = (five[3] + five[4]) / 2
    pts[67] = five[2]
    from agebias.data.fgnet import landmarks_from_68

    got, markup = landmarks_from_68(pts)
    assert markup == "xm2vts"
    assert np.allclose(got, five, atol=1e-6)
