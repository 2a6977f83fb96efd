"""CSV manifests: ``path,subject,age`` plus any extra columns; paths are relative to the CSV's folder.

The subject column may be named ``id`` instead, as in the manifest.csv of a set agebias generated (read here as a
plain manifest, e.g. by ``agebias datasets check manifest``). ``age`` may be empty (unknown). Optional landmark
columns ``lm0_x, lm0_y, ..., lm4_x, lm4_y`` (five points in image pixels, ArcFace order) become
``FaceRecord.landmarks``. Every other column goes to ``extra`` as a string.
Rows whose file is missing or whose age does not parse are reported as problems.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from agebias.atomic import write_text
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import UserError

REQUIRED = ("path", "subject", "age")
LANDMARK_COLUMNS = tuple(f"lm{i}_{c}" for i in range(5) for c in ("x", "y"))


def parse_age(value: Any) -> int | None:
    """Whole years from a cell ("12", "12.0", ""); None when empty; ValueError when not a non-negative number."""
    text = str(value).strip() if value is not None else ""
    if text == "" or text.lower() in ("na", "nan", "none", "unknown"):
        return None
    age = float(text)
    if not (0 <= age < 199.5):  # whole years 0-199 after rounding (half to even); NaN fails too
        raise ValueError(f"age {text!r} out of range")
    return int(round(age))


def read_manifest(csv_path: str | os.PathLike, name: str | None = None, check_files: bool = True) -> DatasetScan:
    """Read a manifest CSV into a :class:`DatasetScan`. Raises ``UserError`` if the file or a column is missing."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"manifest {csv_path} not found")
    base = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            subject_column = "subject" if "subject" in fields or "id" not in fields else "id"
            missing = [c for c in ("path", subject_column) if c not in fields]
            if missing:
                raise UserError(f"manifest {csv_path} lacks column(s) {', '.join(missing)} (need path,subject,age; "
                                f"a generated set's id column counts as subject)")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"manifest {csv_path} is not a readable UTF-8 CSV file ({type(err).__name__})") from None
    records: list[FaceRecord] = []
    problems: list[Problem] = []
    has_landmarks = all(c in fields for c in LANDMARK_COLUMNS)
    extra_columns = [k for k in dict.fromkeys(fields)
                     if k and k not in REQUIRED and k != subject_column and k not in LANDMARK_COLUMNS]
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v if v is not None else "") for k, v in row.items()}
        rel = row.get("path", "").strip()
        if not rel:
            problems.append(Problem(f"{csv_path}:{line}", "empty path"))
            continue
        path = Path(rel) if os.path.isabs(rel) else base / rel
        if check_files and not path.is_file():
            problems.append(Problem(str(path), f"listed in {csv_path.name} line {line} but not found"))
            continue
        try:
            age = parse_age(row.get("age", ""))
        except ValueError:
            problems.append(Problem(str(path), f"bad age {row.get('age')!r} in {csv_path.name} line {line}"))
            continue
        landmarks = None
        if has_landmarks and all(row.get(c, "").strip() for c in LANDMARK_COLUMNS):
            try:
                vals = [float(row[c]) for c in LANDMARK_COLUMNS]
                landmarks = tuple((vals[2 * i], vals[2 * i + 1]) for i in range(5))
            except ValueError:
                problems.append(Problem(str(path), f"bad landmark value in {csv_path.name} line {line}"))
                continue
        extra = {k: row[k] for k in extra_columns if k in row}
        records.append(FaceRecord(path=path, subject=str(row.get(subject_column, "")).strip(), age=age,
                                  landmarks=landmarks, extra=extra))
    return DatasetScan(name=name or csv_path.stem, root=base, records=records, problems=problems)


def records_to_rows(records: Iterable[FaceRecord], base: str | os.PathLike) -> list[dict[str, Any]]:
    """Manifest rows for records, paths relative to ``base`` where possible, extras as further columns."""
    base = Path(base)
    rows = []
    for r in records:
        try:
            rel = os.path.relpath(r.path, base)
        except ValueError:  # different drive on Windows
            rel = str(r.path)
        row: dict[str, Any] = {"path": Path(rel).as_posix(), "subject": r.subject,
                               "age": "" if r.age is None else r.age}
        if r.landmarks is not None:
            for i, (x, y) in enumerate(r.landmarks):
                row[f"lm{i}_x"], row[f"lm{i}_y"] = f"{x:.3f}", f"{y:.3f}"
        row.update({k: v for k, v in r.extra.items() if k not in row})
        rows.append(row)
    return rows


def csv_columns(rows: Iterable[Mapping[str, Any]], head: Sequence[str] = ()) -> list[str]:
    """``head``, then every other key of ``rows`` in first-seen order."""
    return list(dict.fromkeys([*head, *(k for row in rows for k in row)]))


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text for rows; columns default to the union of keys in first-seen order (:func:`csv_columns`)."""
    if columns is None:
        columns = csv_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def write_manifest(csv_path: str | os.PathLike, records: Iterable[FaceRecord]) -> Path:
    """Write records as a manifest CSV (atomic); paths relative to the CSV's folder. Returns the path."""
    csv_path = Path(csv_path)
    rows = records_to_rows(records, csv_path.parent)
    write_text(csv_path, rows_to_csv(rows, csv_columns(rows, REQUIRED)))
    return csv_path
