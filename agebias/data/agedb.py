"""AgeDB file names: ``<n>_<name>_<age>_<gender>.jpg`` (e.g. ``0_MariaCallas_35_f.jpg``).

Subject = ``<name>``, age in years, ``extra = {"gender": "f"|"m", "index": "<n>", "source": "agedb"}``.
Files that do not match are listed as problems.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from agebias.data.images import is_image_name
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import UserError

AGEDB_RE = re.compile(r"^(\d+)_(.+)_(\d{1,3})_([mMfF])\.(jpe?g|png)$", re.IGNORECASE)


def parse_agedb_name(name: str) -> tuple[str, int, str, str] | None:
    """``(subject, age, gender, index)`` from an AgeDB file name, or None."""
    m = AGEDB_RE.match(name)
    if not m:
        return None
    return m.group(2), int(m.group(3)), m.group(4).lower(), m.group(1)


def scan_agedb(root: str | os.PathLike) -> DatasetScan:
    """Scan a folder (recursively) of AgeDB-named images."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"AgeDB folder {root} not found (see datasets/README.md)")
    records: list[FaceRecord] = []
    problems: list[Problem] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.startswith(".") or not is_image_name(f):
                continue
            path = Path(dirpath) / f
            parsed = parse_agedb_name(f)
            if parsed is None:
                problems.append(Problem(str(path), "name does not match AgeDB pattern <n>_<name>_<age>_<gender>.jpg"))
                continue
            subject, age, gender, index = parsed
            records.append(FaceRecord(path=path, subject=subject, age=age,
                                      extra={"gender": gender, "index": index, "source": "agedb"}))
    return DatasetScan(name="agedb", root=root, records=records, problems=problems)


def looks_like_agedb(root: Path, sample: int = 100) -> bool:
    """True when most image names under ``root`` parse as AgeDB names."""
    seen = hits = 0
    for _dirpath, _dirs, files in os.walk(root):
        for f in files:
            if is_image_name(f):
                seen += 1
                hits += parse_agedb_name(f) is not None
        if seen >= sample:
            break
    return seen > 0 and hits >= 0.8 * seen
