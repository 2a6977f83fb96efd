"""A plain folder of images (inputs to ``agebias align``): subject = the parent folder's name, age unknown.

Files with image extensions are records (bad ones surface later, when read); other files are ignored silently
except that non-hidden files with no image extension are listed as problems so nothing vanishes unnoticed.
"""

from __future__ import annotations

import os
from pathlib import Path

from agebias.data.images import is_image_name
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import UserError

_IGNORED = (".csv", ".json", ".txt", ".md", ".pts", ".db", ".ini")


def scan_folder(root: str | os.PathLike) -> DatasetScan:
    """Every image file under ``root`` (recursively, sorted) as a record with ``age=None``."""
    root = Path(root)
    if root.is_file():
        return DatasetScan(name=root.stem, root=root.parent, records=[record_for_file(root)], problems=[])
    if not root.is_dir():
        raise UserError(f"{root} not found")
    records: list[FaceRecord] = []
    problems: list[Problem] = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            path = Path(dirpath) / f
            if f.startswith("."):
                continue
            if is_image_name(f):
                records.append(record_for_file(path))
            elif not f.lower().endswith(_IGNORED):
                problems.append(Problem(str(path), "not an image file name (extension not recognised)"))
    return DatasetScan(name=root.name or "folder", root=root, records=records, problems=problems)


def record_for_file(path: str | os.PathLike) -> FaceRecord:
    """A record for one image file: subject = parent folder name, age unknown."""
    path = Path(path)
    return FaceRecord(path=path, subject=path.parent.name or path.stem, age=None, extra={})
