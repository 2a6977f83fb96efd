"""Counting a scanned dataset: subjects, images, images per age bin and unreadable images (for ``agebias datasets
check``). Every image file's size is checked; a sample of them (or all) is decoded, so a corrupt file is a problem
here and not a surprise later."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from agebias.data.images import load_image
from agebias.data.records import DatasetScan, Problem
from agebias.errors import BadInputFile

DECODE_SAMPLE = 200
"""Images decoded by default (evenly spread over the records); ``sample=None`` decodes every one."""
AGE_BIN_EDGES = (0, 6, 11, 16, 21, 31, 41, 51, 61)
"""Lower edges (years) of the summary bins 0-5, 6-10, 11-15, 16-20, 21-30, 31-40, 41-50, 51-60, 61+."""


def age_bin_label(age: int | None) -> str:
    """The summary bin of an age ("0-5", ..., "61+"; "unknown" for None)."""
    if age is None:
        return "unknown"
    for lo, hi in pairwise(AGE_BIN_EDGES):
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
    decoded: int = 0  # images decoded to look for corrupt files

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def summarize(scan: DatasetScan, sample: int | None = DECODE_SAMPLE) -> DatasetSummary:
    """Counts for a scan; age bins in ascending order, empty bins kept (so tables line up), "unknown" last.
    Problems: the scan's, empty or unreadable files, and images that do not decode among ``sample`` of them
    (evenly spread; ``None``: all)."""
    counts = Counter(age_bin_label(r.age) for r in scan.records)
    labels = [age_bin_label(lo) for lo in AGE_BIN_EDGES]
    per_bin = {label: counts.get(label, 0) for label in labels}
    if counts.get("unknown"):
        per_bin["unknown"] = counts["unknown"]
    unreadable, decoded = _unreadable_files(scan, sample)
    return DatasetSummary(name=scan.name, root=str(scan.root), subjects=len(scan.subjects), images=len(scan.records),
                          with_landmarks=sum(r.landmarks is not None for r in scan.records), per_age_bin=per_bin,
                          problems=[p.as_dict() for p in [*scan.problems, *unreadable]], decoded=decoded)


def decode_sample(n: int, sample: int | None) -> list[int]:
    """Indices of the records to decode: all for ``sample=None`` or ``n <= sample``, else ``sample`` indices
    spread evenly from the first to the last."""
    if sample is None or n <= sample:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, max(sample, 1)).round().astype(int).tolist()))


def _unreadable_files(scan: DatasetScan, sample: int | None) -> tuple[list[Problem], int]:
    """(problems, images decoded): missing, empty and (among the sample) undecodable image files. A file shared
    by several records (all faces of a group photo) is checked once."""
    out: list[Problem] = []
    paths = list(dict.fromkeys(Path(r.path) for r in scan.records))
    chosen = set(decode_sample(len(paths), sample))
    decoded = 0
    for i, path in enumerate(paths):
        try:
            if path.stat().st_size == 0:
                out.append(Problem(str(path), "empty file (0 bytes); it will be skipped"))
                continue
        except OSError:
            out.append(Problem(str(path), "listed but not readable"))
            continue
        if i in chosen:
            decoded += 1
            try:
                load_image(path)
            except BadInputFile as err:
                out.append(Problem(str(path), f"{err.reason}; it will be skipped"))
    return out, decoded
