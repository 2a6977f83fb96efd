"""Image hygiene: every kind of awkward or bad file is either read correctly or rejected with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agebias.data import images
from agebias.data.images import decode_image, is_image_name, load_image
from agebias.errors import BadInputFile


def _rgb(h=40, w=60):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    assert np.array_equal(out, arr)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    g = np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) % 256
    Image.fromarray(g.astype(np.uint8), mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (40, 60, 3)
    assert np.array_equal(out[..., 0], g) and np.array_equal(out[..., 0], out[..., 2])


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    g = np.full((10, 12), 40000, dtype=np.uint16)
    g[0, 0] = 65535
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (10, 12, 3)
    assert out[5, 5, 0] == 40000 >> 8 and out[0, 0, 1] == 255


def test_cmyk_jpeg_converted(tmp_path):
    Image.fromarray(np.full((16, 16, 3), (200, 30, 30), np.uint8)).convert("CMYK").save(tmp_path / "c.jpg")
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3)
    r, g, b = out[8, 8].astype(int)
    assert r > 150 and g < 80 and b < 80


def test_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:4, :, 3] = 255  # top half opaque red, bottom transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[7, 7]) == (255, 255, 255)


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)  # landscape, left half white
    arr[:, :20] = 255
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=98)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)  # displayed upright: portrait
    assert out[5, 10].mean() > 200 and out[35, 10].mean() < 50  # left half rotated to the top


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, I am not a picture\n" * 10, "not an image"),
])
def test_empty_and_non_image_rejected(tmp_path, content, reason):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(BadInputFile) as err:
        load_image(p)
    assert reason in err.value.reason and err.value.path == str(p)


def test_truncated_jpeg_rejected(tmp_path):
    Image.fromarray(_rgb(200, 200)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputFile) as err:
        load_image(tmp_path / "cut.jpg")
    assert "truncated" in err.value.reason or "corrupt" in err.value.reason


def test_truncated_png_rejected(tmp_path):
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    with pytest.raises(BadInputFile):
        decode_image(data[: len(data) // 2], "cut.png")


def test_decompression_bomb_reported_not_decoded(tmp_path):
    # A 12000x12000 1-bit PNG is tiny on disk but 144 MP: over the 100 MP limit.
    Image.new("1", (12000, 12000)).save(tmp_path / "bomb.png", optimize=False)
    assert (tmp_path / "bomb.png").stat().st_size < 2_000_000
    with pytest.raises(BadInputFile) as err:
        load_image(tmp_path / "bomb.png")
    assert "too large" in err.value.reason


def test_limit_is_configurable(tmp_path, monkeypatch):
    Image.fromarray(_rgb(50, 50)).save(tmp_path / "a.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(BadInputFile, match="too large"):
        load_image(tmp_path / "a.png")


def test_missing_and_folder(tmp_path):
    with pytest.raises(BadInputFile, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(BadInputFile):
        load_image(tmp_path)


def test_is_image_name():
    assert is_image_name("A.JPG") and is_image_name("x.jpeg") and is_image_name("y.PNG")
    assert not is_image_name("x.pts") and not is_image_name("notes.txt")
