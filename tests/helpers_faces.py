"""Fixture-free helpers for tests that need faces: paths to real photos shipped inside installed packages, and
small FG-NET-named trees with ``.pts`` landmark files built from generated images.

Import from tests as ``from helpers_faces import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image

from agebias.data.align import ARCFACE_TEMPLATE


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def insightface_image(name: str = "t1.jpg") -> Path | None:
    """``insightface/data/images/<name>`` (``t1.jpg``: 6 faces; ``Tom_Hanks_54745.png``: 112x112 aligned)."""
    root = _package_dir("insightface")
    path = root / "data" / "images" / name if root else None
    return path if path is not None and path.is_file() else None


def grace_hopper_path() -> Path | None:
    """matplotlib's ``mpl-data/sample_data/grace_hopper.jpg`` (one face)."""
    root = _package_dir("matplotlib")
    path = root / "mpl-data" / "sample_data" / "grace_hopper.jpg" if root else None
    return path if path is not None and path.is_file() else None


def astronaut_path(folder: str | os.PathLike) -> Path:
    """scikit-image's astronaut (one face) written as a PNG into ``folder``; returns its path."""
    from skimage import data

    path = Path(folder) / "astronaut.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(path)
    return path


def tom_hanks_aligned() -> Path | None:
    """insightface's already aligned 112x112 ``Tom_Hanks_54745.png``."""
    return insightface_image("Tom_Hanks_54745.png")


def synthetic_face(landmarks5: np.ndarray, size: tuple[int, int] = (200, 240), seed: int = 0) -> np.ndarray:
    """A uint8 (H, W, 3) RGB picture with dark dots at the five landmarks (eyes, nose, mouth corners) on a
    textured skin-coloured background; good enough for landmark alignment tests (not for detectors)."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (205, 170, 140), np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-20, 20, size=(h, w, 1)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for x, y in np.asarray(landmarks5, float):
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 9] = (20, 20, 20)
    return img


def landmarks68_for(five: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 68-point (iBUG order) set whose eye means, nose tip (30) and mouth corners (48, 54) equal ``five``."""
    rng = np.random.default_rng(seed)
    five = np.asarray(five, float)
    pts = rng.uniform(five.min(0) - 20, five.max(0) + 20, size=(68, 2))
    for idx, centre in ((range(36, 42), five[0]), (range(42, 48), five[1])):
        ring = np.array([[np.cos(a) * 6, np.sin(a) * 3] for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)])
        pts[list(idx)] = centre + ring - ring.mean(0)
    pts[30], pts[48], pts[54] = five[2], five[3], five[4]
    return pts


def landmarks68_xm2vts_for(five: np.ndarray) -> np.ndarray:
    """A 68-point set in FG-NET's own markup (Cootes's XM2VTS style: eye outlines 27-30 / 32-35 around the pupils
    31 / 36, nose 37-47, mouth 48-66 with corners 48 and 54, nose tip 67) whose pupils, nose tip and mouth corners
    equal ``five`` (ArcFace order)."""
    five = np.asarray(five, float)
    d = float(np.linalg.norm(five[1] - five[0]))
    pts = np.zeros((68, 2))
    centre = five[:2].mean(0)
    angles = np.linspace(0, np.pi, 15)
    pts[0:15] = centre + np.stack([-1.2 * d * np.cos(angles), 0.3 * d + 1.1 * d * np.sin(angles)], 1)  # jaw
    pts[15:27] = centre + np.stack([np.linspace(-0.9 * d, 0.9 * d, 12), np.full(12, -0.35 * d)], 1)  # brows
    w, h = 0.22 * d, 0.08 * d
    pts[27:31] = five[0] + [[-w, 0], [0, -h], [w, 0], [0, h]]  # outer corner, upper lid, inner corner, lower lid
    pts[31] = five[0]
    pts[32:36] = five[1] + [[w, 0], [0, -h], [-w, 0], [0, h]]
    pts[36] = five[1]
    pts[37:48] = five[2] + np.stack([np.linspace(-0.15 * d, 0.15 * d, 11), np.linspace(-0.4 * d, 0.05 * d, 11)], 1)
    mouth_mid = (five[3] + five[4]) / 2
    pts[48:66] = mouth_mid + np.stack([np.linspace(-0.35 * d, 0.35 * d, 18), np.zeros(18)], 1)
    pts[48], pts[54] = five[3], five[4]
    pts[66] = mouth_mid
    pts[67] = five[2]
    return pts


def write_pts(path: str | os.PathLike, points: np.ndarray) -> Path:
    """Write points in the standard ``.pts`` text format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["version: 1", f"n_points: {len(points)}", "{"] + [f"{x:.3f} {y:.3f}" for x, y in points] + ["}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def face_landmarks(seed: int = 0) -> np.ndarray:
    """Five plausible landmarks in a 200x240 image: the template scaled by ~1.4, shifted and rotated a little."""
    rng = np.random.default_rng(seed)
    angle = np.deg2rad(rng.uniform(-12, 12))
    scale = rng.uniform(1.2, 1.6)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centred = ARCFACE_TEMPLATE.astype(float) - ARCFACE_TEMPLATE.mean(0)
    return centred @ rot.T * scale + np.array([100.0, 120.0]) + rng.uniform(-10, 10, 2)


# Original-layout names covering every quirk: lowercase "a", same-age letter suffixes, extension case, .jpeg.
FGNET_QUIRK_NAMES = {
    "001A02.JPG": ("001", 2),
    "001a05.jpg": ("001", 5),
    "001A43b.JPG": ("001", 43),
    "001A43.JPG": ("001", 43),
    "010A07a.JPG": ("010", 7),
    "010A07.jpg": ("010", 7),
    "010A12.JpG": ("010", 12),
    "082A69.jpeg": ("082", 69),
}
FGNET_BAD_NAMES = ("01A02.JPG", "001B02.JPG", "001A2.JPG", "001A02ab.JPG")


def make_fgnet_tree(root: str | os.PathLike, *, regrouped: bool = False, with_pts: bool = True,
                    bad_names: bool = True) -> dict[str, tuple[str, int, np.ndarray]]:
    """Build a small FG-NET tree under ``root`` from synthetic images; returns ``{file path: (subject, age, five
    landmarks)}`` for the good files. Original layout: ``images/`` + ``points/`` (``.pts`` in FG-NET's own
    XM2VTS-style markup); regrouped: ``<sss>/<sss>_<aa>.jpg`` (no .pts). With ``bad_names`` a few non-parsing names
    are added (they must be reported, not read)."""
    root = Path(root)
    out: dict[str, tuple[str, int, np.ndarray]] = {}
    for i, (name, (subject, age)) in enumerate(sorted(FGNET_QUIRK_NAMES.items())):
        five = face_landmarks(i)
        if regrouped:
            stem = f"{subject}_{age:02d}" + (name[6] if len(name.split(".")[0]) == 7 else "")
            path = root / subject / f"{stem}.jpg"
        else:
            path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_face(five, seed=i)).save(path, format="JPEG", quality=95)
        if with_pts and not regrouped:
            write_pts(root / "points" / (Path(name).stem + ".pts"), landmarks68_xm2vts_for(five))
        out[str(path)] = (subject, age, five)
    if bad_names:
        folder = root / ("001" if regrouped else "images")
        for name in FGNET_BAD_NAMES:
            Image.fromarray(synthetic_face(face_landmarks(0))).save(folder / name, format="JPEG")
    return out
