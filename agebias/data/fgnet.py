"""FG-NET as distributed (``images/001A02.JPG`` + ``points/001A02.pts``) and regrouped (``001/001_02.jpg``).

Original names: ``^(\\d{3})[aA](\\d{2})([a-z]?)\\.(jpe?g)$`` (extension case-insensitive): subject ``001``, age 2;
a lowercase ``a`` and same-age letter suffixes (``010A07a.JPG``) occur. Regrouped names: ``<sss>/<sss>_<aa>.jpg``
(an optional letter suffix after the age is kept apart as ``extra["duplicate"]``). Names that do not parse are
reported as problems, never guessed.

The 68-point ``.pts`` files give the five alignment points: eye centres (means of points 36-41 and 42-47),
nose tip 30, mouth corners 48 and 54 (0-based indices).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from agebias.data.images import is_image_name
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import UserError

ORIGINAL_RE = re.compile(r"^(\d{3})[aA](\d{2})([a-zA-Z]?)\.(jpe?g)$", re.IGNORECASE)
REGROUPED_RE = re.compile(r"^(\d{3})_(\d{2})([a-zA-Z]?)\.(jpe?g|png)$", re.IGNORECASE)
POINT_FOLDERS = ("points", "Points", "POINTS", "pts", "landmarks")

FGNET_HELP = ("FG-NET is not redistributed with agebias: obtain it (see datasets/README.md) and unpack it to "
              "datasets/fgnet (images/ and points/ inside), or pass --root DIR")


def parse_fgnet_name(name: str) -> tuple[str, int, str] | None:
    """``(subject, age, duplicate_suffix)`` from an original or regrouped FG-NET file name, or None."""
    m = ORIGINAL_RE.match(name) or REGROUPED_RE.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2)), m.group(3).lower()


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


def five_from_68(points: np.ndarray) -> tuple[tuple[float, float], ...]:
    """ArcFace-order five points from a 68-point (iBUG) layout."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape != (68, 2):
        raise ValueError(f"expected 68 points, got {p.shape[0]}")
    five = np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
    return tuple((float(x), float(y)) for x, y in five)


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
                    landmarks = five_from_68(read_pts(pts_path))
                    extra["landmarks_file"] = str(pts_path)
                except (OSError, ValueError) as err:
                    problems.append(Problem(str(pts_path), f"bad landmark file ({err}); the image will need a "
                                                           "detector"))
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
