"""FG-NET as distributed (``images/001A02.JPG`` + ``points/001A02.pts``) and regrouped (``001/001_02.jpg``).

Original names: ``^(\\d{3})[aA](\\d{2})([a-z]?)\\.(jpe?g)$`` (extension case-insensitive): subject ``001``, age 2;
a lowercase ``a`` and same-age letter suffixes (``010A07a.JPG``) occur. Regrouped names: ``<sss>/<sss>_<aa>.jpg``
(an optional letter suffix after the age is kept apart as ``extra["duplicate"]``). Names that do not parse are
reported as problems, never guessed.

agebias reads every FG-NET image whatever the case of its extension. The MSc thesis did not: its organiser
(MSc_FR_Bias ``src/data/data_preprocessing.py``, ``orgranize_fgnet_dataset``) moved only files whose names end in
upper-case ``.JPG`` into the ``<id>/<id>_<age>.jpg`` folders its ``ImageFolder`` read (anything else stayed
behind, unread), and split names at an upper-case ``A`` (a lower-case ``001a02.JPG`` stops it with an
IndexError). :func:`thesis_organiser_moves` states that rule; ``--protocol msc`` counts the images it would have
left out (``organiser`` in its results) but uses every image.

The 68-point ``.pts`` files give the five alignment points. FG-NET's own files follow Cootes's XM2VTS-style
markup (0-based: image-left eye outline 27-30 around its pupil 31, image-right eye outline 32-35 around its pupil
36, nose tip 67, mouth corners 48 and 54; checked on published FG-NET point files), so that markup is tried first;
iBUG 300-W / dlib (eye centres = means of 36-41 and 42-47, nose tip 30, mouth corners 48 and 54) is the fallback
for re-annotated sets.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from agebias.data.images import is_image_name
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import UserError

ORIGINAL_RE = re.compile(r"^(\d{3})[aA](\d{2})([a-zA-Z]?)\.(jpe?g)$", re.IGNORECASE)
REGROUPED_RE = re.compile(r"^(\d{3})_(\d{2})([a-zA-Z]?)\.(jpe?g|png)$", re.IGNORECASE)
POINT_FOLDERS = ("points", "Points", "POINTS", "pts", "landmarks")

DEFAULT_ROOT = "datasets/fgnet"  # where the README puts FG-NET, relative to the working folder
FGNET_HELP = ("FG-NET is not redistributed with agebias: obtain it (see datasets/README.md) and unpack it to "
              f"{DEFAULT_ROOT} (images/ and points/ inside), or pass --root DIR")


def parse_fgnet_name(name: str) -> tuple[str, int, str] | None:
    """``(subject, age, duplicate_suffix)`` from an original or regrouped FG-NET file name, or None."""
    m = ORIGINAL_RE.match(name) or REGROUPED_RE.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2)), m.group(3).lower()


def thesis_organiser_moves(name: str) -> bool:
    """Whether the MSc thesis's FG-NET organiser would have moved (and so used) an original-layout file: its name
    ends in upper-case ``.JPG`` and holds an upper-case ``A`` before the extension (see the module notes)."""
    return name.endswith(".JPG") and "A" in name.split(".")[0]


def read_pts(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.pts`` landmark file (``version: 1``, ``n_points: N``, ``{``, N lines ``x y``, ``}``) as (N, 2)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    header, _, rest = text.partition("{")
    body, close, _ = rest.partition("}")
    m = re.search(r"n_points\s*:\s*(\d+)", header)
    if not m or not close:
        raise ValueError("not a .pts file (missing n_points header or braces)")
    n = int(m.group(1))
    try:
        values = [float(v) for v in body.split()]
    except ValueError:
        raise ValueError("non-numeric coordinate in .pts file") from None
    if len(values) != 2 * n:
        raise ValueError(f".pts file declares {n} points but holds {len(values) / 2:g}")
    return np.asarray(values, dtype=np.float64).reshape(n, 2)


# 68-point markups met in face data: (first-eye points, second-eye points, nose tip, mouth corners).
# "xm2vts" (Cootes's XM2VTS / MUCT markup, FG-NET's own): pupils 31 and 36, nose tip 67, mouth corners 48 and 54;
# which eye is on the image's left is taken from the x coordinates.
# "ibug" (iBUG 300-W / dlib): eyes 36-41 and 42-47, nose tip 30, mouth corners 48 and 54.
MARKUPS_68: dict[str, tuple[tuple[int, ...], tuple[int, ...], int, tuple[int, int]]] = {
    "xm2vts": ((31,), (36,), 67, (48, 54)),
    "ibug": (tuple(range(36, 42)), tuple(range(42, 48)), 30, (48, 54)),
}
FGNET_MARKUPS = ("xm2vts", "ibug")
"""The order in which FG-NET ``.pts`` files are read: FG-NET's own markup first, iBUG as the fallback."""
# XM2VTS eye outlines (4 points each) around the pupils 31 and 36
_XM2VTS_EYE_OUTLINES = ((tuple(range(27, 31)), 31), (tuple(range(32, 36)), 36))


def five_from_68(points: np.ndarray, markup: str = "ibug") -> tuple[tuple[float, float], ...]:
    """ArcFace-order five points (image-left eye first) from a 68-point layout in ``markup``."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected 68 points, got {p.shape[0]}")
    eye_a, eye_b, nose, (m_a, m_b) = MARKUPS_68[markup]
    eyes = [p[list(eye_a)].mean(0), p[list(eye_b)].mean(0)]
    mouth = [p[m_a], p[m_b]]
    if markup != "ibug":  # sides not fixed by the markup's numbering: order by x
        eyes.sort(key=lambda q: q[0])
        mouth.sort(key=lambda q: q[0])
    five = np.stack([eyes[0], eyes[1], p[nose], mouth[0], mouth[1]])
    return tuple((float(x), float(y)) for x, y in five)


def landmarks_from_68(points: np.ndarray, markups: Sequence[str] = FGNET_MARKUPS
                      ) -> tuple[tuple[tuple[float, float], ...] | None, str]:
    """The five points from the first of ``markups`` (default: xm2vts, then ibug) that fits the file; returns
    ``(five, markup)``, or ``(None, reason)`` when none fits (the image then needs a detector).

    A markup fits when its five points form a face (:func:`face_layout_problem`) and, for xm2vts, each pupil lies
    within its eye outline."""
    reasons = []
    for markup in markups:
        five = five_from_68(points, markup)
        why = face_layout_problem(five) or (_xm2vts_problem(points) if markup == "xm2vts" else None)
        if why is None:
            return five, markup
        reasons.append(f"{markup}: {why}")
    return None, "; ".join(reasons)


def _xm2vts_problem(points: np.ndarray) -> str | None:
    """Why ``points`` are not in XM2VTS markup (a pupil outside the box of its eye outline, widened by a quarter
    of the box on each side), or None."""
    p = np.asarray(points, dtype=np.float64)
    for outline, pupil in _XM2VTS_EYE_OUTLINES:
        lo, hi = p[list(outline)].min(0), p[list(outline)].max(0)
        lo, hi = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
        if np.any(p[pupil] < lo) or np.any(p[pupil] > hi):
            return f"point {pupil} is not inside its eye outline {outline[0]}-{outline[-1]}"
    return None


def face_layout_problem(five: Sequence[Sequence[float]]) -> str | None:
    """Why five ArcFace-order points cannot be a face, or None when they can.

    In the frame of the eye line (u along it, v perpendicular, pointing down the face) the left eye must lie left
    of the right eye, the nose below the eyes, the mouth below the nose and its left corner left of its right one.
    Points read in the wrong 68-point markup usually fail this, so the next markup is tried, and a file that fits
    none leaves its image to a detector instead of being warped with points that are not the eyes."""
    p = np.asarray(five, dtype=np.float64).reshape(5, 2)
    le, re, nose, ml, mr = p
    d = float(np.linalg.norm(re - le))
    if not np.all(np.isfinite(p)) or d < 1e-6 or re[0] <= le[0]:
        return "eye points are not left-to-right"
    u = (re - le) / d
    v = np.array([-u[1], u[0]])
    mid = (le + re) / 2
    nose_v = float((nose - mid) @ v)
    mouth_v = float(((ml + mr) / 2 - mid) @ v)
    if not 0.1 * d < nose_v < mouth_v < 3.0 * d or float((mr - ml) @ u) <= 0:
        return "points are not in eye / nose / mouth order"
    return None


def _pts_index(root: Path) -> dict[str, Path]:
    """Map lower-case file stem -> .pts path for every .pts file under ``root``."""
    index: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            if f.lower().endswith(".pts"):
                index.setdefault(Path(f).stem.lower(), Path(dirpath) / f)
    return index


def scan_fgnet(root: str | os.PathLike) -> DatasetScan:
    """Scan an FG-NET tree (either layout, any nesting); attach landmarks from ``.pts`` files when present.

    Raises ``UserError`` when ``root`` does not exist. Every image file whose name does not parse, and every
    unreadable ``.pts`` file, is listed in ``problems``.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"FG-NET root {root} not found. {FGNET_HELP}")
    pts = _pts_index(root)
    if not pts:  # root given as the images/ folder itself: look for a sibling points folder
        for name in POINT_FOLDERS:
            if (root.parent / name).is_dir():
                pts = _pts_index(root.parent / name)
                break
    records: list[FaceRecord] = []
    problems: list[Problem] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            path = Path(dirpath) / f
            if f.startswith(".") or f.lower().endswith(".pts") or f.lower() in ("readme", "readme.txt", "license"):
                continue
            if not is_image_name(f):
                if not f.lower().endswith((".txt", ".csv", ".json", ".md", ".db", ".ini")):
                    problems.append(Problem(str(path), "not an FG-NET image name (ignored)"))
                continue
            parsed = parse_fgnet_name(f)
            if parsed is None:
                problems.append(Problem(str(path), "file name does not match FG-NET pattern 001A02.JPG or "
                                                   "001/001_02.jpg"))
                continue
            subject, age, dup = parsed
            if REGROUPED_RE.match(f) and path.parent.name != subject and path.parent != root:
                problems.append(Problem(str(path), f"regrouped name in folder {path.parent.name!r}, "
                                                   f"expected {subject!r}"))
                continue
            landmarks = None
            extra: dict[str, str] = {"source": "fgnet"}
            if dup:
                extra["duplicate"] = dup
            pts_path = pts.get(path.stem.lower())
            if pts_path is not None:
                try:
                    landmarks, markup = landmarks_from_68(read_pts(pts_path))
                except (OSError, ValueError) as err:
                    problems.append(Problem(str(pts_path), f"bad landmark file ({err}); the image will need a "
                                                           "detector"))
                else:
                    if landmarks is None:
                        problems.append(Problem(str(pts_path), f"landmarks fit no known 68-point markup ({markup}); "
                                                               "the image will need a detector"))
                    else:
                        extra["landmarks_file"] = str(pts_path)
                        extra["landmarks_markup"] = markup
            records.append(FaceRecord(path=path, subject=subject, age=age, landmarks=landmarks, extra=extra))
    return DatasetScan(name="fgnet", root=root, records=records, problems=problems)


def looks_like_fgnet(root: Path, sample: int = 200) -> bool:
    """Heuristic for ``open_dataset(kind="auto")``: most image names under ``root`` parse as FG-NET names
    (60%, or 50% when ``.pts`` landmark files are present too)."""
    seen = hits = 0
    has_pts = False
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            has_pts = has_pts or f.lower().endswith(".pts")
            if is_image_name(f) and seen < sample:
                seen += 1
                hits += parse_fgnet_name(f) is not None and (ORIGINAL_RE.match(f) is not None
                                                              or Path(dirpath).name == f[:3])
        if seen >= sample and has_pts:
            break
    return seen > 0 and hits >= (0.5 if has_pts else 0.6) * seen
