"""Age groups, one convention for the whole toolkit (evaluation, fine-tuning, mitigation, search).

Bins are written ``0-12,13-19,20-39,40-69``: inclusive whole years; ``70+`` for an open end. The default
(:data:`DEFAULT_AGE_BINS`) suits FG-NET (ages 0-69, most images under 20): children 0-12, teenagers 13-19, young
adults 20-39, older adults 40-69. A real-valued age m (e.g. a pair's mean age) falls in the bin with
lo <= m < hi + 1. (Generators' ``--age-intervals 0-5,5-10`` are sampling intervals for target ages, not
groups: :mod:`generators.ages`.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Sequence

import numpy as np

from agebias.errors import UserError

DEFAULT_AGE_BINS = "0-12,13-19,20-39,40-69"
OPEN_END = 10**6


@dataclass(frozen=True)
class AgeBins:
    """Inclusive integer ranges (lo, hi); ``hi`` = OPEN_END for ``70+``."""

    edges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> "AgeBins":
        edges = []
        for part in str(text).replace(" ", "").split(","):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+)|(\+))", part)
            if not m:
                raise UserError(f"age bin {part!r} is not like '13-19' or '70+' (in {text!r})")
            lo = int(m.group(1))
            hi = OPEN_END if m.group(3) else int(m.group(2))
            if hi < lo:
                raise UserError(f"age bin {part!r} ends before it starts")
            edges.append((lo, hi))
        if not edges:
            raise UserError(f"no age bins in {text!r}")
        edges.sort()
        for (_, b), (c, _) in pairwise(edges):
            if c <= b:
                raise UserError(f"age bins overlap in {text!r}")
        return cls(tuple(edges))

    @property
    def labels(self) -> list[str]:
        return [f"{lo}+" if hi >= OPEN_END else f"{lo}-{hi}" for lo, hi in self.edges]

    def __len__(self) -> int:
        return len(self.edges)

    def index(self, age: float | None) -> int:
        """Bin index of a (possibly fractional) age; -1 when unknown or outside every bin."""
        if age is None or not (age == age):
            return -1
        for i, (lo, hi) in enumerate(self.edges):
            if lo <= age < hi + 1:
                return i
        return -1

    def assign(self, ages: Sequence[float | None]) -> np.ndarray:
        """Bin index of every age (int64); -1 for unknown ages and ages outside every bin."""
        if isinstance(ages, np.ndarray) and ages.dtype.kind in "iuf":
            a = ages.astype(np.float64)
        else:
            a = np.array([np.nan if x is None else x for x in ages], dtype=np.float64)
        out = np.full(a.shape, -1, dtype=np.int64)
        for i, (lo, hi) in reversed(list(enumerate(self.edges))):  # the first bin wins, as in index()
            out[(a >= lo) & (a < hi + 1)] = i
        return out
