"""The generated-identity layout: ``<root>/<id>/<id>_<age>.png`` plus ``<root>/manifest.csv``.

This is the MSc thesis pipeline's (MSc_FR_Bias) layout, kept so its outputs read directly. ``manifest.csv``
columns: ``path`` (relative to root), ``id``, ``age`` (whole years), ``method`` (generator name), ``seed``,
``source`` (the source photo, when the identity came from one), ``parameters`` (JSON), ``checksum``
(``sha256:<hex>`` of the image file). Readers accept extra columns and missing optional ones; a root with the
layout but no manifest also reads (subject = id, age from the file name).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from agebias.atomic import write_text
from agebias.data.images import is_image_name
from agebias.data.manifest import csv_columns, parse_age, rows_to_csv
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import UserError

MANIFEST_NAME = "manifest.csv"
GENERATED_COLUMNS = ("path", "id", "age", "method", "seed", "source", "parameters", "checksum")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_RE = re.compile(r"^(?P<id>.+)_(?P<age>\d{1,3})\.(png|jpe?g|webp)$", re.IGNORECASE)


def check_identity_id(identity: str) -> str:
    """Validate an identity id for use as a folder name (letters, digits, ``._-``; no path separators)."""
    identity = str(identity)
    if not _ID_RE.match(identity):
        raise UserError(f"identity id {identity!r} is not usable as a folder name (use letters, digits, . _ -)")
    return identity


def generated_image_path(root: str | os.PathLike, identity: str, age: int, ext: str = ".png") -> Path:
    """``<root>/<id>/<id>_<age>.png`` (age as a whole number of years, not zero-padded)."""
    identity = check_identity_id(identity)
    age_i = int(age)
    if age_i < 0:
        raise UserError(f"age {age} must be >= 0")
    return Path(root) / identity / f"{identity}_{age_i}{ext}"


def parse_generated_name(path: str | os.PathLike) -> tuple[str, int] | None:
    """``(id, age)`` for a file named ``<id>_<age>.<ext>`` inside a folder named ``<id>``; else None."""
    p = Path(path)
    m = _NAME_RE.match(p.name)
    if not m or m.group("id") != p.parent.name:
        return None
    return m.group("id"), int(m.group("age"))


def file_checksum(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def read_generated_rows(root: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of ``<root>/manifest.csv`` as dicts (empty list when there is no manifest)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [{(k or "").strip(): (v or "") for k, v in row.items()} for row in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path} is not a readable UTF-8 CSV file ({type(err).__name__})") from None


def write_generated_manifest(root: str | os.PathLike, rows: Iterable[Mapping[str, Any]], *,
                             merge: bool = True, compute_checksums: bool = True) -> Path:
    """Write ``<root>/manifest.csv`` atomically.

    Each row needs ``id`` and ``age``; ``path`` defaults to the layout path, ``checksum`` is computed from the
    file when missing (and the file exists), ``parameters`` may be a dict (stored as JSON). With ``merge`` the
    existing manifest's rows are kept and rows with the same ``(id, age)`` are replaced, so a resumed generator
    can write its manifest after every identity. Columns: :data:`GENERATED_COLUMNS` first, then any extras.
    """
    root = Path(root)
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    if merge:
        for old in read_generated_rows(root):
            merged[(old.get("id", ""), str(old.get("age", "")))] = old
    for row in rows:
        row = dict(row)
        if "id" not in row or "age" not in row:
            raise ValueError("each generated manifest row needs 'id' and 'age'")
        identity, age = check_identity_id(row["id"]), int(row["age"])
        row["id"], row["age"] = identity, age
        if not row.get("path"):
            row["path"] = generated_image_path(Path("."), identity, age).as_posix()
        if isinstance(row.get("parameters"), (dict, list)):
            row["parameters"] = json.dumps(row["parameters"], sort_keys=True)
        file_path = root / row["path"]
        if compute_checksums and not row.get("checksum") and file_path.is_file():
            row["checksum"] = file_checksum(file_path)
        merged[(identity, str(age))] = row
    ordered = sorted(merged.values(), key=lambda r: (str(r.get("id")), int(r.get("age", 0))))
    path = root / MANIFEST_NAME
    write_text(path, rows_to_csv(ordered, csv_columns(ordered, GENERATED_COLUMNS)))
    return path


def scan_generated(root: str | os.PathLike, verify_checksums: bool = False, check_files: bool = True) -> DatasetScan:
    """Read a generated set: from ``manifest.csv`` when present, else from the folder layout alone.

    Records: subject = id, age from the manifest/file name, ``extra`` = the other manifest columns (method, seed,
    source, parameters, checksum, ...). Missing files, bad ages and (with ``verify_checksums``) checksum
    mismatches are problems; with a manifest, image files it does not list are problems too. With
    ``check_files=False`` the manifest's paths are only keys (e.g. to match precomputed embeddings) and nothing
    is read from the images. ``aligned`` comes from ``generation.json`` (``aligned_crops``), when present.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"generated set {root} not found")
    rows = read_generated_rows(root)
    records: list[FaceRecord] = []
    problems: list[Problem] = []
    if rows:
        listed: set[Path] = set()
        for line, row in enumerate(rows, start=2):
            identity = row.get("id") or row.get("subject") or ""
            rel = row.get("path") or ""
            if not rel and identity and row.get("age"):
                rel = generated_image_path(Path("."), identity, int(float(row["age"]))).as_posix()
            path = root / rel
            listed.add(path.resolve())
            if not identity or not rel:
                problems.append(Problem(f"{root / MANIFEST_NAME}:{line}", "row lacks id or path"))
                continue
            try:
                age = parse_age(row.get("age", ""))
            except ValueError:
                problems.append(Problem(str(path), f"bad age {row.get('age')!r} in manifest line {line}"))
                continue
            if check_files and not path.is_file():
                problems.append(Problem(str(path), f"listed in manifest line {line} but not found"))
                continue
            if verify_checksums and row.get("checksum") and file_checksum(path) != row["checksum"]:
                problems.append(Problem(str(path), "checksum does not match the manifest"))
                continue
            extra = {k: v for k, v in row.items() if k not in ("path", "id", "subject", "age") and k}
            records.append(FaceRecord(path=path, subject=identity, age=age, extra=extra))
        for path in _layout_images(root) if check_files else []:
            if path.resolve() not in listed:
                problems.append(Problem(str(path), "image not listed in manifest.csv (ignored)"))
    else:
        layout = _layout_images(root)
        in_layout = set(layout)
        for path in _image_files(root):  # images outside <id>/ folders would otherwise vanish unreported
            if path not in in_layout and not _generator_extra(root, path):
                problems.append(Problem(str(path), "not inside an identity folder (<id>/<id>_<age>.png)"))
        for path in layout:
            parsed = parse_generated_name(path)
            if parsed is None:
                problems.append(Problem(str(path), "name does not match <id>/<id>_<age>.png"))
                continue
            records.append(FaceRecord(path=path, subject=parsed[0], age=parsed[1], extra={}))
    return DatasetScan(name=root.name or "generated", root=root, records=records, problems=problems,
                       aligned=generation_info(root).get("aligned_crops"))


def generation_info(root: str | os.PathLike) -> dict[str, Any]:
    """``<root>/generation.json`` as written by ``agebias generate`` (empty when absent or unreadable)."""
    try:
        info = json.loads((Path(root) / "generation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def manifest_header(folder: Path, name: str = MANIFEST_NAME) -> list[str]:
    """The column names of ``<folder>/<name>`` (empty when there is no such file)."""
    path = folder / name
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path} is not a readable UTF-8 CSV file ({type(err).__name__})") from None


def looks_like_generated(root: Path) -> bool:
    """True when ``root`` has a ``manifest.csv`` with an ``id`` column, or its images follow the layout."""
    if (root / MANIFEST_NAME).is_file():
        return "id" in manifest_header(root)
    files = _layout_images(root)[:50]
    return bool(files) and all(parse_generated_name(p) is not None for p in files)


def _layout_images(root: Path) -> list[Path]:
    """Images inside the identity folders (``<root>/<id>/*``); the contact sheet at the top and the ``qc/``
    folder a generator writes beside them are not part of the set."""
    return [p for p in _image_files(root) if len(p.relative_to(root).parts) == 2 and p.parent.name != "qc"]


def _generator_extra(root: Path, path: Path) -> bool:
    """The contact sheet and QC files a generator writes beside the identity folders."""
    parts = path.relative_to(root).parts
    return parts[0] == "qc" or (len(parts) == 1 and parts[0].startswith("contact_sheet"))


def _image_files(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if is_image_name(f) and not f.startswith("."):
                out.append(Path(dirpath) / f)
    return out
