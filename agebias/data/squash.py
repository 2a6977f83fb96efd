"""The ``squash`` face preparation: the MSc thesis's input path, the whole photo resized to 112x112, no alignment.

The thesis (MSc_FR_Bias ``src/eval/evaluate_fine_tuned_model.py`` and ``src/optimization/fine_tuning_pipeline.py``)
loads every image with torchvision's ``ImageFolder`` (PIL, ``convert("RGB")``, no EXIF rotation) and applies
``Compose([ToTensor(), Normalize(0.5, 0.5), Resize((112, 112))])``, in that order, no flip. Normalising before
resizing changes nothing in exact arithmetic (bilinear weights sum to 1), but ``Resize`` then sees a *tensor*, and
torchvision's antialias default for tensors decides the pixels: off before torchvision 0.17, on from 0.17. The
thesis pinned ``torchvision==0.10.0`` (its ``src/requirements.txt``), whose tensor ``Resize`` is
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` without antialiasing; agebias's
environment has a torchvision >= 0.17, where the same ``Compose`` would antialias. :func:`thesis_input` therefore
calls ``interpolate`` with ``antialias=False``: the thesis's numbers, not today's torchvision default.

Every embedder takes uint8 crops, so :func:`squash_image` maps the float result back to 0..255 and rounds: each
network input value then differs from the thesis's float one by at most 1/255 (half a grey level, in the
network's [-1, 1] units). Any image that decodes is used: there is no detection step that could fail.
"""

from __future__ import annotations

import io

import numpy as np

from agebias.data.images import decode_image

SIZE = 112


def decode_like_imagefolder(data: bytes, name: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB as torchvision's ``ImageFolder`` loader reads a file: PIL ``convert("RGB")`` of the
    stored pixels (no EXIF rotation; an alpha channel is dropped, not composited). Raises ``BadInputFile``."""
    from PIL import Image

    pixels = decode_image(data, name, exif_transpose=False)  # validates the file (size limit, corruption)
    with Image.open(io.BytesIO(data)) as img:
        if img.mode not in ("RGB", "L"):  # modes where agebias's own RGB conversion differs from PIL's
            pixels = np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return pixels


def thesis_input(rgb: np.ndarray, antialias: bool = False):
    """The thesis's network input for one uint8 (H, W, 3) RGB image: float32 (3, 112, 112) in [-1, 1], computed
    as ``ToTensor -> Normalize(0.5, 0.5) -> Resize((112, 112))`` on a tensor with torchvision 0.10's behaviour
    (``antialias=False``; ``True`` gives torchvision >= 0.17's)."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div(255)  # ToTensor (a copy)
    x = x.sub(0.5).div(0.5)                                                                            # Normalize
    return F.interpolate(x[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                         antialias=antialias)[0]                                                       # Resize


def squash_image(rgb: np.ndarray) -> np.ndarray:
    """uint8 (112, 112, 3) RGB crop whose network input ``(x / 255 - 0.5) / 0.5`` is the thesis's input to within
    1/255 (see the module notes)."""
    import torch

    x = thesis_input(rgb)
    pixels = ((x * 0.5 + 0.5) * 255.0).round().clamp(0, 255).to(dtype=torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).numpy())


def squash_file(data: bytes, name: str) -> np.ndarray:
    """The squashed 112x112 crop of an encoded image (``BadInputFile`` only when it does not decode)."""
    return squash_image(decode_like_imagefolder(data, name))
