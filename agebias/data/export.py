"""Align a set of sources into a folder of crops: ``<out>/<subject>/<stem>[_f<k>].png`` + ``manifest.csv``.

``manifest.csv`` columns: ``path`` (relative to ``out``), ``subject``, ``age``, ``source_path`` (the original
image), ``face`` (index with all-faces, else empty), then the records' extra columns. Everything that could not
be used goes to ``skipped.csv`` (``path,reason``) and ``skipped.json`` (a list of ``{"path", "reason"}``); both are
always written (empty when nothing was skipped) so a rerun never leaves a stale list. All writes are atomic.
The output folder reads back with ``open_dataset(out)`` (kind ``manifest``) and aligns with ``aligned=True``.
Sources without a single image file are an error (:class:`DataError`), not an empty manifest.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from agebias.atomic import write_json, write_text
from agebias.data.faces import load_aligned_faces
from agebias.data.folder import scan_folder
from agebias.data.images import is_image_name, save_png
from agebias.data.manifest import REQUIRED, csv_columns, rows_to_csv
from agebias.data.records import FaceRecord, Problem
from agebias.data.sources import KINDS, open_dataset
from agebias.errors import DataError, UserError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class ExportResult:
    out: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.csv"


def gather_records(sources: Sequence[str | os.PathLike], kind: str = "auto") -> tuple[list[FaceRecord], list[Problem]]:
    """Records and scan problems from every source (folders, manifests, datasets or single image files)."""
    if not sources:
        raise UserError("no source given: pass image files or folders")
    kind = (kind or "auto").lower()
    if kind != "auto" and kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; choose from auto, {', '.join(KINDS)}")
    records: list[FaceRecord] = []
    problems: list[Problem] = []
    for src in sources:
        path = Path(src).expanduser()
        if not path.exists():
            raise UserError(f"{path} not found")
        if path.is_file() and is_image_name(path.name) and kind in ("auto", "folder"):
            scan = scan_folder(path)
        elif path.is_file() and is_image_name(path.name):
            problems.append(Problem(str(path), f"a single image is not a {kind} dataset: pass its folder, or "
                                               f"--kind folder"))
            continue
        elif path.is_file() and not path.suffix.lower() == ".csv":
            problems.append(Problem(str(path), "not an image file name (extension not recognised)"))
            continue
        else:
            scan = open_dataset(path, kind)
        records.extend(scan.records)
        problems.extend(scan.problems)
    return records, problems


def align_to_folder(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, kind: str = "auto",
                    detector: str = "auto", aligned: bool = False, all_faces: bool = False,
                    cache_dir: str | os.PathLike | None = None, device: str = "cpu") -> ExportResult:
    """Align every face in ``sources`` into ``out`` (see the module notes). Never stops on a bad file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the crops and manifest")
    records, problems = gather_records(sources, kind)
    if not records:
        where = ", ".join(str(s) for s in sources)
        left_out = f": {len(problems)} file(s) left out, e.g. {problems[0].path}: {problems[0].reason}" if problems \
            else ": it holds no image file"
        raise DataError(f"no image to align in {where}{left_out}")
    faces = load_aligned_faces(records, detector=detector, aligned=aligned, all_faces=all_faces,
                               cache_dir=cache_dir, device=device)
    result = ExportResult(out=out, skipped=problems + faces.skipped)
    used: set[str] = set()
    rows = []
    for record, crop in zip(faces.records, faces.crops, strict=True):
        rel = _unique_name(record, used)
        save_png(crop, out / rel)
        result.written.append(out / rel)
        row = {"path": rel, "subject": record.subject, "age": "" if record.age is None else record.age,
               "source_path": str(record.path), "face": record.extra.get("face", "")}
        row.update({k: v for k, v in record.extra.items() if k not in row and k not in REQUIRED})
        rows.append(row)
    write_text(out / "manifest.csv", rows_to_csv(rows, csv_columns(rows, [*REQUIRED, "source_path", "face"])))
    write_skipped(out, result.skipped)
    return result


def write_skipped(out: str | os.PathLike, skipped: Iterable[Problem]) -> None:
    """``skipped.csv`` (path,reason) and ``skipped.json`` in ``out``, atomically."""
    items = [p.as_dict() for p in skipped]
    write_text(Path(out) / "skipped.csv", rows_to_csv(items, ["path", "reason"]))
    write_json(Path(out) / "skipped.json", items)


def _unique_name(record: FaceRecord, used: set[str]) -> str:
    subject = _SAFE.sub("_", record.subject) or "unknown"
    stem = _SAFE.sub("_", Path(record.path).stem) or "image"
    face = record.extra.get("face", "")
    base = f"{subject}/{stem}" + (f"_f{face}" if face != "" else "")
    name, k = f"{base}.png", 1
    while name.lower() in used:
        k += 1
        name = f"{base}_{k}.png"
    used.add(name.lower())
    return name
