"""Target ages: fixed lists (``--ages 5,10,15``) or random ages drawn per identity from sampling intervals
(``--age-intervals``).

Conventions: ages are whole years. An interval ``lo-hi`` is half-open, ``lo <= age < hi``, except the last one,
which also includes ``hi`` (so ``0-5,5-10,...,50-70`` covers 0..70 without overlaps, as in the MSc thesis pipeline
(MSc_FR_Bias), which drew one random age per interval 0-5, 5-10, 10-15, 15-20, 20-30, 30-40, 40-50, 50-70).
These are sampling intervals for target ages, not the inclusive age *groups* of evaluation (``--age-bins
0-12,13-19``, :mod:`agebias.data.ages`).
Random draws are seeded per identity (``seed`` and the identity id), so a rerun or a resumed run draws the
same ages, and adding identities does not change the ages of the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from agebias.errors import SettingsError

STAGE = "generate"  # the settings these errors name (GenerateSettings), so the CLI words them with its flags


def _bad(field: str, message: str) -> SettingsError:
    return SettingsError(message, field=field, stage=STAGE)


def parse_ages(text: str | Sequence[int]) -> list[int]:
    """``"3,8,14"`` -> ``[3, 8, 14]`` (sorted, duplicates removed). Raises ``SettingsError`` (field ``ages``) on bad
    input."""
    if not isinstance(text, str):
        values = [int(v) for v in text]
    else:
        values = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            try:
                values.append(int(part))
            except ValueError:
                raise _bad("ages", f"'{part}' is not a whole number of years (expected e.g. 5,10,15)") from None
    if not values:
        raise _bad("ages", "no ages given (expected e.g. 5,10,15)")
    bad = [v for v in values if v < 0]
    if bad:
        raise _bad("ages", f"negative age {bad[0]}")
    return sorted(set(values))


def parse_age_intervals(text: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``"0-5,5-10"`` -> ``[(0, 5), (5, 10)]``. Intervals must be increasing and non-overlapping (else
    ``SettingsError``, field ``age_intervals``)."""
    if not isinstance(text, str):
        intervals = [(int(lo), int(hi)) for lo, hi in text]
    else:
        intervals = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            pieces = part.split("-")
            try:
                lo, hi = (int(pieces[0]), int(pieces[1])) if len(pieces) == 2 else (None, None)
            except ValueError:
                lo = hi = None
            if lo is None or hi is None:
                raise _bad("age_intervals", f"'{part}' is not a range like 20-30")
            intervals.append((lo, hi))
    if not intervals:
        raise _bad("age_intervals", "no intervals given (expected e.g. 0-5,5-10,10-15)")
    for i, (lo, hi) in enumerate(intervals):
        if lo < 0 or hi <= lo:
            raise _bad("age_intervals", f"bad range {lo}-{hi} (need 0 <= low < high)")
        if i and lo < intervals[i - 1][1]:
            raise _bad("age_intervals", f"intervals overlap or are not increasing at {lo}-{hi}")
    return intervals


def interval_values(intervals: Sequence[tuple[int, int]], index: int) -> list[int]:
    """The whole-year ages an interval covers (the last one includes its upper end)."""
    lo, hi = intervals[index]
    return list(range(lo, hi + 1 if index == len(intervals) - 1 else hi))


def _identity_rng(seed: int, identity_id: str) -> np.random.Generator:
    digest = hashlib.sha256(identity_id.encode("utf-8")).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest[:8], "little")])


@dataclass(frozen=True)
class AgePlan:
    """Which ages each identity gets: a fixed list for everyone, or ``per_interval`` random ages per interval."""

    ages: tuple[int, ...] | None = None
    intervals: tuple[tuple[int, int], ...] | None = None
    per_interval: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.ages is None) == (self.intervals is None):
            raise _bad("ages", "give either ages or age intervals (exactly one)")
        if self.intervals is not None:
            if self.per_interval < 1:
                raise _bad("per_interval", "must be at least 1")
            for i in range(len(self.intervals)):
                width = len(interval_values(self.intervals, i))
                if self.per_interval > width:
                    lo, hi = self.intervals[i]
                    raise _bad("per_interval", f"{self.per_interval} is more than the {width} distinct ages in "
                                             f"interval {lo}-{hi}")

    @classmethod
    def from_options(cls, ages: str | None = None, age_intervals: str | None = None, per_interval: int = 1,
                     seed: int = 0) -> "AgePlan":
        if ages and age_intervals:
            raise _bad("age_intervals", "give either ages or age intervals, not both")
        if ages:
            if per_interval != 1:
                raise _bad("per_interval", "goes with age intervals (random ages per interval), not with fixed ages")
            return cls(ages=tuple(parse_ages(ages)), seed=seed)
        if age_intervals:
            return cls(intervals=tuple(parse_age_intervals(age_intervals)), per_interval=per_interval, seed=seed)
        raise _bad("ages", "give target ages (e.g. 5,10,15) or age intervals (e.g. 0-5,5-10,10-15)")

    def ages_for(self, identity_id: str) -> list[int]:
        """Sorted target ages of one identity (deterministic given ``seed`` and the id)."""
        if self.ages is not None:
            return list(self.ages)
        rng = _identity_rng(self.seed, identity_id)
        out: list[int] = []
        for i in range(len(self.intervals)):
            values = interval_values(self.intervals, i)
            out.extend(int(v) for v in rng.choice(values, size=self.per_interval, replace=False))
        return sorted(set(out))

    def all_ages(self) -> list[int]:
        """Every age this plan can produce (for range checks before any work starts)."""
        if self.ages is not None:
            return list(self.ages)
        lo, hi = self.intervals[0][0], self.intervals[-1][1]
        return [lo, hi]

    def describe(self) -> dict:
        if self.ages is not None:
            return {"ages": list(self.ages)}
        return {"age_intervals": [list(b) for b in self.intervals], "per_interval": self.per_interval,
                "seed": self.seed}


AgesArg = Sequence[int] | Mapping[str, Sequence[int]] | AgePlan


def ages_for(ages: AgesArg, identity_id: str) -> list[int]:
    """Resolve the ``ages`` argument of a generator call for one identity (list, mapping or :class:`AgePlan`)."""
    if isinstance(ages, AgePlan):
        return ages.ages_for(identity_id)
    if isinstance(ages, Mapping):
        return [int(a) for a in ages.get(identity_id, ())]
    return [int(a) for a in ages]
