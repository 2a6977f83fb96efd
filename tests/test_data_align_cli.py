"""`agebias align` on a folder mixing good photos (in awkward formats) with each kind of bad file."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from agebias.cli import main
from agebias.data.images import load_image
from agebias.data.sources import open_dataset
from helpers_faces import grace_hopper_path, make_fgnet_tree

pytest.importorskip("facenet_pytorch")

GOOD = ("good.jpg", "gray.png", "cmyk.jpg", "sixteen.png", "alpha.png", "exif_rotated.jpg")
BAD = {"empty.jpg": "empty file", "truncated.jpg": "truncated", "text.png": "not an image",
       "bomb.png": "too large", "wall.png": "no face found", "data.xyz": "extension not recognised"}


def _mixed_folder(folder):
    src = grace_hopper_path()
    if src is None:
        pytest.skip("matplotlib sample photo not installed")
    rgb = np.asarray(Image.open(src).convert("RGB"))
    d = folder / "person"
    d.mkdir(parents=True)
    Image.fromarray(rgb).save(d / "good.jpg", quality=95)
    Image.fromarray(rgb).convert("L").save(d / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    gray16 = (np.asarray(Image.fromarray(rgb).convert("L"), np.uint16) * 257)
    Image.fromarray(gray16).save(d / "sixteen.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, k=1)))  # stored sideways ...
    exif = stored.getexif()
    exif[0x0112] = 6  # ... with the EXIF tag that turns it upright for display
    stored.save(d / "exif_rotated.jpg", exif=exif.tobytes(), quality=95)
    (d / "empty.jpg").write_bytes(b"")
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "text.png").write_text("this is not a picture\n")
    Image.new("1", (12000, 12000)).save(d / "bomb.png")
    Image.fromarray(np.full((240, 240, 3), 120, np.uint8)).save(d / "wall.png")
    (d / "data.xyz").write_bytes(b"\x00\x01")
    return folder


def _blocks(crop, k=8):
    """Means over k x k blocks: compares crops while tolerating the 1-2 px jitter between MTCNN detections."""
    c = np.asarray(crop, float)
    return c.reshape(112 // k, k, 112 // k, k, -1).mean((1, 3))


@pytest.mark.slow  # seven MTCNN detections on 512x600 images
def test_align_mixed_folder(tmp_path, capsys):
    src = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["--quiet", "align", str(src), "--out", str(out), "--detector", "mtcnn",
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 1
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["source_path"].rsplit("/", 1)[1] for r in rows) == sorted(GOOD)
    assert all(r["subject"] == "person" and r["age"] == "" for r in rows)
    crops = {r["source_path"].rsplit("/", 1)[1]: load_image(out / r["path"]) for r in rows}
    assert all(c.shape == (112, 112, 3) for c in crops.values())
    good = crops["good.jpg"].astype(float)
    # every awkward-but-valid format aligns to (nearly) the same crop as the plain JPEG; the EXIF-rotated one too
    for name in ("cmyk.jpg", "alpha.png", "exif_rotated.jpg"):
        assert np.abs(_blocks(crops[name]) - _blocks(good)).mean() < 10, name
    for name in ("gray.png", "sixteen.png"):
        assert np.abs(_blocks(crops[name][..., :1]) - _blocks(good @ np.array([[0.299], [0.587], [0.114]]))).mean() < 10, name
    with open(out / "skipped.csv", newline="") as fh:
        skipped = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in csv.DictReader(fh)}
    assert set(skipped) == set(BAD)
    for name, reason in BAD.items():
        assert reason in skipped[name], (name, skipped[name])
    assert len(json.loads((out / "skipped.json").read_text())) == len(BAD)
    # the output folder reads back as a dataset of aligned crops
    back = open_dataset(out)
    assert len(back.records) == len(GOOD) and not back.problems
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind


def test_align_clean_fgnet_exit_zero(tmp_path):
    make_fgnet_tree(tmp_path / "fg", bad_names=False)
    out = tmp_path / "out"
    assert main(["--quiet", "align", str(tmp_path / "fg"), "--out", str(out)]) == 0
    scan = open_dataset(out)
    assert sorted((r.subject, r.age) for r in scan.records)[:2] == [("001", 2), ("001", 5)]
    assert len(scan.records) == 8
    assert json.loads((out / "skipped.json").read_text()) == []
    assert (out / "skipped.csv").read_text().strip() == "path,reason"


def test_align_aligned_passthrough_and_missing_source(tmp_path, capsys):
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(tmp_path / "crop.png")
    assert main(["--quiet", "align", str(tmp_path / "crop.png"), "--out", str(tmp_path / "o"), "--aligned"]) == 0
    assert main(["--quiet", "align", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert "not found" in capsys.readouterr().err


def test_align_bad_device_kind_and_out_are_one_line(tmp_path, capsys):
    """--device banana ended in a torch traceback, --kind foo on an image file was misreported as a bad file
    name (exit 1), and --out naming an existing file ended in NotADirectoryError."""
    img = tmp_path / "face.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(img)
    runs = [
        (["align", str(img), "--out", str(tmp_path / "o1"), "--device", "banana", "--cache-dir", str(tmp_path / "c")],
         "unknown device"),
        (["align", str(img), "--out", str(tmp_path / "o2"), "--kind", "foo"], "unknown dataset kind"),
        (["align", str(img), "--out", str(img)], "is a file"),
    ]
    for args, words in runs:
        assert main(["-q", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    # nothing left to align: an error (exit 2) that gives the reason, not an empty manifest
    assert main(["-q", "align", str(img), "--out", str(tmp_path / "o3"), "--kind", "fgnet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no image to align" in err and "not a fgnet dataset" in err
    assert not (tmp_path / "o3").exists()


def test_align_empty_folder_is_an_error_and_skips_are_listed(tmp_path, capsys):
    """`align` on an empty folder exited 0 with an empty manifest, and exit 1 printed nothing."""
    (tmp_path / "empty").mkdir()
    assert main(["-q", "align", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: no image to align in {tmp_path / 'empty'}: it holds no image file\n"
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(src / "crop.png")
    for k in range(7):
        (src / f"bad{k}.png").write_bytes(b"not a png")
    assert main(["-q", "align", str(src), "--out", str(tmp_path / "o"), "--aligned"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"warning: 7 input(s) skipped; the full list is in {tmp_path / 'o' / 'skipped.csv'}"
    assert err[1].startswith(f"warning:   {src / 'bad0.png'}: ") and err[-1] == "warning:   ... and 2 more"
