"""Target ages: fixed lists (``--ages 5,10,15``) or random ages drawn per identity from bins (``--age-bins``).

Conventions: ages are whole years. A bin ``lo-hi`` covers ``lo <= age < hi``, except the last bin, which also
includes ``hi`` (so ``0-5,5-10,...,50-70`` covers 0..70 without overlaps, as in the MSc thesis pipeline
(MSc_FR_Bias), which drew one random age per bin 0-5, 5-10, 10-15, 15-20, 20-30, 30-40, 40-50, 50-70).
Random draws are seeded per identity (``seed`` and the identity id), so a rerun or a resumed run draws the
same ages, and adding identities does not change the ages of the others.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from agebias.errors import UserError


def parse_ages(text: str | Sequence[int]) -> list[int]:
    """``"3,8,14"`` -> ``[3, 8, 14]`` (sorted, duplicates removed). Raises ``UserError`` on bad input."""
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
                raise UserError(f"--ages: '{part}' is not a whole number of years (expected e.g. 5,10,15)") from None
    if not values:
        raise UserError("--ages: no ages given (expected e.g. 5,10,15)")
    bad = [v for v in values if v < 0]
    if bad:
        raise UserError(f"--ages: negative age {bad[0]}")
    return sorted(set(values))


def parse_age_bins(text: str | Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``"0-5,5-10"`` -> ``[(0, 5), (5, 10)]``. Bins must be increasing and non-overlapping."""
    if not isinstance(text, str):
        bins = [(int(lo), int(hi)) for lo, hi in text]
    else:
        bins = []
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            pieces = part.split("-")
            try:
                lo, hi = (int(pieces[0]), int(pieces[1])) if len(pieces) == 2 else (None, None)
            except ValueError:
                lo = hi = None
            if lo is None or hi is None:
                raise UserError(f"--age-bins: '{part}' is not a range like 20-30")
            bins.append((lo, hi))
    if not bins:
        raise UserError("--age-bins: no bins given (expected e.g. 0-5,5-10,10-15)")
    for i, (lo, hi) in enumerate(bins):
        if lo < 0 or hi <= lo:
            raise UserError(f"--age-bins: bad range {lo}-{hi} (need 0 <= low < high)")
        if i and lo < bins[i - 1][1]:
            raise UserError(f"--age-bins: bins overlap or are not increasing at {lo}-{hi}")
    return bins


def bin_values(bins: Sequence[tuple[int, int]], index: int) -> list[int]:
    """The whole-year ages a bin covers (the last bin includes its upper end)."""
    lo, hi = bins[index]
    return list(range(lo, hi + 1 if index == len(bins) - 1 else hi))


def _identity_rng(seed: int, identity_id: str) -> np.random.Generator:
    digest = hashlib.sha256(identity_id.encode("utf-8")).digest()
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(digest[:8], "little")])


@dataclass(frozen=True)
class AgePlan:
    """Which ages each identity gets: a fixed list for everyone, or ``per_bin`` random ages per bin."""

    ages: tuple[int, ...] | None = None
    bins: tuple[tuple[int, int], ...] | None = None
    per_bin: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.ages is None) == (self.bins is None):
            raise UserError("give either --ages or --age-bins (exactly one)")
        if self.bins is not None:
            if self.per_bin < 1:
                raise UserError("--per-bin must be at least 1")
            for i in range(len(self.bins)):
                width = len(bin_values(self.bins, i))
                if self.per_bin > width:
                    lo, hi = self.bins[i]
                    raise UserError(f"--per-bin {self.per_bin} is more than the {width} distinct ages in bin {lo}-{hi}")

    @classmethod
    def from_options(cls, ages: str | None = None, age_bins: str | None = None, per_bin: int = 1,
                     seed: int = 0) -> "AgePlan":
        if ages and age_bins:
            raise UserError("give either --ages or --age-bins, not both")
        if ages:
            if per_bin != 1:
                raise UserError("--per-bin goes with --age-bins (random ages per bin), not with --ages")
            return cls(ages=tuple(parse_ages(ages)), seed=seed)
        if age_bins:
            return cls(bins=tuple(parse_age_bins(age_bins)), per_bin=per_bin, seed=seed)
        raise UserError("give --ages (e.g. 5,10,15) or --age-bins (e.g. 0-5,5-10,10-15)")

    def ages_for(self, identity_id: str) -> list[int]:
        """Sorted target ages of one identity (deterministic given ``seed`` and the id)."""
        if self.ages is not None:
            return list(self.ages)
        rng = _identity_rng(self.seed, identity_id)
        out: list[int] = []
        for i in range(len(self.bins)):
            values = bin_values(self.bins, i)
            out.extend(int(v) for v in rng.choice(values, size=self.per_bin, replace=False))
        return sorted(set(out))

    def all_ages(self) -> list[int]:
        """Every age this plan can produce (for range checks before any work starts)."""
        if self.ages is not None:
            return list(self.ages)
        lo, hi = self.bins[0][0], self.bins[-1][1]
        return [lo, hi]

    def describe(self) -> dict:
        if self.ages is not None:
            return {"ages": list(self.ages)}
        return {"age_bins": [list(b) for b in self.bins], "per_bin": self.per_bin, "seed": self.seed}


AgesArg = Sequence[int] | Mapping[str, Sequence[int]] | AgePlan


def ages_for(ages: AgesArg, identity_id: str) -> list[int]:
    """Resolve the ``ages`` argument of a generator call for one identity (list, mapping or :class:`AgePlan`)."""
    if isinstance(ages, AgePlan):
        return ages.ages_for(identity_id)
    if isinstance(ages, Mapping):
        return [int(a) for a in ages.get(identity_id, ())]
    return [int(a) for a in ages]
