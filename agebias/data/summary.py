"""Counting a scanned dataset: subjects, images and images per age bin (for ``agebias datasets check``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pathlib import Path

from agebias.data.records import DatasetScan, Problem

AGE_BIN_EDGES = (0, 6, 11, 16, 21, 31, 41, 51, 61)
"""Lower edges (years) of the summary bins 0-5, 6-10, 11-15, 16-20, 21-30, 31-40, 41-50, 51-60, 61+."""


def age_bin_label(age: int | None) -> str:
    """The summary bin of an age ("0-5", ..., "61+"; "unknown" for None)."""
    if age is None:
        return "unknown"
    for lo, hi in zip(AGE_BIN_EDGES, AGE_BIN_EDGES[1:]):
        if lo <= age < hi:
            return f"{lo}-{hi - 1}"
    return f"{AGE_BIN_EDGES[-1]}+"


@dataclass
class DatasetSummary:
    name: str
    root: str
    subjects: int
    images: int
    with_landmarks: int
    per_age_bin: dict[str, int] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def summarize(scan: DatasetScan) -> DatasetSummary:
    """Counts for a scan; age bins in ascending order, empty bins kept (so tables line up), "unknown" last."""
    counts = Counter(age_bin_label(r.age) for r in scan.records)
    labels = [age_bin_label(lo) for lo in AGE_BIN_EDGES]
    per_bin = {label: counts.get(label, 0) for label in labels}
    if counts.get("unknown"):
        per_bin["unknown"] = counts["unknown"]
    return DatasetSummary(name=scan.name, root=str(scan.root), subjects=len(scan.subjects), images=len(scan.records),
                          with_landmarks=sum(r.landmarks is not None for r in scan.records), per_age_bin=per_bin,
                          problems=[p.as_dict() for p in [*scan.problems, *_empty_files(scan)]])


def _empty_files(scan: DatasetScan) -> list[Problem]:
    """Zero-byte image files (a cheap check; decoding every image is left to the commands that use them)."""
    out = []
    for record in scan.records:
        try:
            if Path(record.path).stat().st_size == 0:
                out.append(Problem(str(record.path), "empty file (0 bytes); it will be skipped"))
        except OSError:
            out.append(Problem(str(record.path), "listed but not readable"))
    return out
