"""Reading images safely: every file becomes uint8 (H, W, 3) RGB or a :class:`BadInputFile` with a reason.

Hygiene rules (one bad file never kills a batch: callers catch ``BadInputFile`` and list it as skipped):

- zero-byte, non-image, truncated/corrupt files -> ``BadInputFile`` with the reason;
- EXIF orientation is applied (``ImageOps.exif_transpose``), so rotated phone photos come out upright;
- grayscale (L, 1, I;16, I, F), palette, CMYK, LA/RGBA (alpha dropped, composited on white) -> RGB;
- 16-bit images are scaled to 8 bits (value >> 8 for 0..65535 data), not clipped;
- images over :data:`MAX_PIXELS` (100 megapixels) are *reported* as skipped ("too large"), never downscaled:
  no face photo needs that many pixels and decoding one can exhaust memory (decompression bomb).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from agebias.errors import BadInputFile

MAX_PIXELS = 100_000_000
"""Largest image (width x height) accepted; larger files are reported as skipped."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
"""File name suffixes (lowercase) treated as images when scanning folders."""


def is_image_name(path: str | os.PathLike) -> bool:
    """True when the file name ends in a known image extension (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB, upright per EXIF. Raises ``BadInputFile`` for bad files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInputFile(path, "file not found") from None
    except IsADirectoryError:
        raise BadInputFile(path, "is a folder, not an image") from None
    except OSError as err:
        raise BadInputFile(path, f"cannot read file ({err.strerror or err})") from None
    return decode_image(data, name=str(path))


def decode_image(data: bytes, name: str = "<bytes>", exif_transpose: bool = True) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) to uint8 (H, W, 3) RGB; see the module notes for the rules.

    ``exif_transpose=False`` keeps the stored pixel order (for landmarks given in stored-pixel coordinates)."""
    if len(data) == 0:
        raise BadInputFile(name, "empty file (0 bytes)")
    # Truncated files fail (PIL's default, ImageFile.LOAD_TRUNCATED_IMAGES = False) rather than decode half an image.
    # Size: our own MAX_PIXELS check decides; PIL's warning (over ~89 MP) is silenced, its hard error (over ~179 MP)
    # is reported like ours.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise BadInputFile(name, f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > "
                                         f"{MAX_PIXELS / 1e6:.0f} MP limit)")
            img.load()
    except BadInputFile:
        raise
    except UnidentifiedImageError:
        raise BadInputFile(name, "not an image (format not recognised)") from None
    except Image.DecompressionBombError:
        raise BadInputFile(name, f"image too large (over the {MAX_PIXELS / 1e6:.0f} MP limit)") from None
    except (OSError, SyntaxError, ValueError) as err:
        msg = str(err)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower() or "premature" in msg.lower():
            raise BadInputFile(name, f"truncated or corrupt image ({msg})") from None
        raise BadInputFile(name, f"corrupt image ({msg})") from None
    try:
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block (any error type from PIL) must not lose a good image
        pass
    return to_rgb_array(img)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to a contiguous uint8 (H, W, 3) RGB array."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        if arr.max(initial=0) > 255:  # genuinely 16-bit data
            arr = arr >> 8
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 (H, W, 3) RGB array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 RGB array as a PNG, atomically."""
    from agebias.atomic import write_bytes

    write_bytes(path, encode_png(image))
