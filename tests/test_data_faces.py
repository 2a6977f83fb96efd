"""load_aligned_faces: MTCNN on real photos shipped in installed packages, pass-through, skips, cache."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from agebias.data.align import ARCFACE_TEMPLATE, estimate_transform, transform_points
from agebias.data.detect import detect_faces, pick_main_face
from agebias.data.faces import default_cache_dir, load_aligned_faces
from agebias.data.folder import record_for_file
from agebias.data.images import load_image
from agebias.data.records import FaceRecord
from agebias.errors import UserError
from helpers_faces import astronaut_path, grace_hopper_path, insightface_image, tom_hanks_aligned

pytest.importorskip("facenet_pytorch")


def _photos(tmp_path):
    paths = [insightface_image("t1.jpg"), astronaut_path(tmp_path), grace_hopper_path()]
    if any(p is None for p in paths):
        pytest.skip("package photos not installed")
    return paths


def _redetect_eyes(crop):
    """Eyes re-detected on the crop (upscaled x2 and padded, where MTCNN works best), in crop pixels."""
    big = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((448, 448, 3), 128, np.uint8)
    canvas[112:336, 112:336] = big
    dets = detect_faces(canvas, min_probability=0.5)
    assert dets, "no face re-detected in the aligned crop"
    best = max(dets, key=lambda d: d.score)
    return (best.landmarks[:2] - 112) / 2


@pytest.mark.slow  # ~5-10 s on 2 shared CPU cores
def test_mtcnn_aligns_package_photos(tmp_path, monkeypatch):
    import agebias.data.detect as detect_mod

    paths = _photos(tmp_path)
    seen = []  # (image shape, detections) of every detector call, recorded by a spy
    real = detect_mod.detect_faces

    def spy(image, **kw):
        out = real(image, **kw)
        seen.append((image.shape, out))
        return out

    monkeypatch.setattr(detect_mod, "detect_faces", spy)
    faces = load_aligned_faces([record_for_file(p) for p in paths], detector="mtcnn", cache_dir=tmp_path / "c",
                               progress=None)
    monkeypatch.setattr(detect_mod, "detect_faces", real)
    assert not faces.skipped and faces.crops.shape == (3, 112, 112, 3) and len(seen) == 3
    assert len(seen[0][1]) >= 5  # t1.jpg: the group photo
    for path, crop, (shape, dets) in zip(paths, faces.crops, seen, strict=True):
        det = pick_main_face(dets, shape)
        moved = transform_points(estimate_transform(det.landmarks), det.landmarks)
        assert np.abs(moved[:2] - ARCFACE_TEMPLATE[:2]).max() < 5.0, path  # eyes land on the template
        assert np.abs(_redetect_eyes(crop) - ARCFACE_TEMPLATE[:2]).max() < 5.0, path
    # the second call is served from the cache (same pixels, no detector run)
    monkeypatch.setattr(detect_mod, "detect_faces", None)
    again = load_aligned_faces([record_for_file(p) for p in paths], detector="mtcnn", cache_dir=tmp_path / "c",
                               progress=None)
    assert np.array_equal(again.crops, faces.crops)
    assert len(list((tmp_path / "c").rglob("*.png"))) == 3


@pytest.mark.slow  # the 1280x886 group photo: ~3-7 s
def test_all_faces_in_group_photo(tmp_path):
    t1 = _photos(tmp_path)[0]
    faces = load_aligned_faces([record_for_file(t1)], detector="mtcnn", all_faces=True, cache_dir=False,
                               progress=None)
    assert len(faces) >= 5 and faces.crops.shape[1:] == (112, 112, 3)
    assert [r.extra["face"] for r in faces.records] == [str(i) for i in range(len(faces))]
    assert len({r.path for r in faces.records}) == 1


def test_main_face_is_largest_central():
    from agebias.data.detect import Detection

    lm = np.zeros((5, 2))
    small_centre = Detection((90, 90, 110, 110), 0.99, lm)
    big_corner = Detection((0, 0, 60, 60), 0.99, lm)
    big_centre = Detection((70, 70, 130, 130), 0.99, lm)
    assert pick_main_face([small_centre, big_corner, big_centre], (200, 200, 3)) is big_centre
    assert pick_main_face([small_centre, big_corner], (200, 200, 3)) is small_centre
    assert pick_main_face([], (200, 200, 3)) is None


def test_no_face_is_reported(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((200, 200, 3), 90, np.uint8)).save(tmp_path / "wall.png")
    faces = load_aligned_faces([record_for_file(tmp_path / "wall.png")], detector="mtcnn", cache_dir=False,
                               progress=None)
    assert len(faces) == 0 and faces.crops.shape == (0, 112, 112, 3)
    assert [(p.path, p.reason) for p in faces.skipped] == [(str(tmp_path / "wall.png"), "no face found")]


def test_aligned_pass_through_and_size_check(tmp_path):
    hanks = tom_hanks_aligned()
    if hanks is None:
        pytest.skip("insightface photos not installed")
    recs = [record_for_file(hanks), record_for_file(astronaut_path(tmp_path))]
    faces = load_aligned_faces(recs, aligned=True, progress=None)
    assert len(faces) == 1 and np.array_equal(faces.crops[0], load_image(hanks))
    assert "not an aligned 112x112 crop (512x512)" in faces.skipped[0].reason
    assert len(load_aligned_faces(recs, detector="none", progress=None)) == 1
    with pytest.raises(UserError):
        load_aligned_faces(recs, aligned=True, detector="mtcnn")
    with pytest.raises(UserError):
        load_aligned_faces(recs, detector="retinaface")


def test_landmarks_detector_needs_landmarks(tmp_path):
    path = astronaut_path(tmp_path)
    faces = load_aligned_faces([FaceRecord(path, "a")], detector="landmarks", progress=None)
    assert len(faces) == 0 and "no landmarks" in faces.skipped[0].reason


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AGEBIAS_CACHE", str(tmp_path / "cc"))
    assert default_cache_dir() == tmp_path / "cc" / "aligned"


def test_landmarks_apply_to_stored_pixels_of_exif_rotated_file(tmp_path):
    """Landmarks (e.g. from .pts files) are stored-pixel coordinates; the image used to be EXIF-rotated first,
    so an Orientation=6 file was warped with points that no longer matched its pixels."""
    from PIL import Image

    h, w = 200, 300
    img = np.zeros((h, w, 3), np.uint8)
    pts = np.array([[110, 90], [170, 90], [140, 120], [115, 150], [165, 150]], float)
    for x, y in pts:
        cv2.circle(img, (int(x), int(y)), 4, (255, 255, 255), -1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(img).save(path, quality=98, exif=exif)
    assert load_image(path).shape[:2] == (w, h)  # the plain reader does honour EXIF
    rec = FaceRecord(path, "s", landmarks=tuple(map(tuple, pts)))
    faces = load_aligned_faces([rec], detector="landmarks", cache_dir=False, progress=None)
    crop = faces.crops[0]
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].mean() > 150  # each dot lands on its template point
