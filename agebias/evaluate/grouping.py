"""Age groups of images and of pairs.

Age bins follow :mod:`agebias.data.ages` (``0-12,13-19,20-39,40-69``: inclusive whole years, ``70+`` open).

A pair's group, by ``mode``:

- ``both`` (default): the pair belongs to group g when both images are in g. Pairs whose images fall in different
  bins (or whose age is unknown / outside every bin) are *cross-group*: they are left out of the per-group tables
  but counted in the overall row; their impostor counts appear in the group x group table.
- ``mean``: NIST FRVT style, the bin of the mean of the two ages.
- ``gap``: the bin of the age gap |a1 - a2| (default bins ``0-5,6-10,11-20,21+``); applied to impostor pairs too so
  that FMR per gap bin is defined.

For the streamed engine every image gets a small integer *class* and pairs get an integer *key* from a
class x class look-up table; each key maps to one reported group (or none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from agebias.data.ages import DEFAULT_AGE_BINS, AgeBins  # noqa: F401  (DEFAULT_AGE_BINS re-exported)
from agebias.errors import UserError

DEFAULT_GAP_BINS = "0-5,6-10,11-20,21+"
MODES = ("both", "mean", "gap")


@dataclass
class PairGrouping:
    """Maps images to classes and pairs (class a, class b) to keys; keys to reported group indices."""

    mode: str
    labels: list[str]            # reported groups
    image_class: np.ndarray      # (N,) int32 class per image
    n_classes: int
    key_lut: np.ndarray          # (C, C) int32 key for an (row class, column class) pair
    n_keys: int
    key_group: np.ndarray        # (K,) int: reported group of a key, -1 = none (cross / unknown)
    separable: bool              # key = row_part[a] + col_part[b] (faster streaming)
    class_group: np.ndarray | None = None  # "both" mode: image group per class (-1 = none)

    def pair_keys(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self.key_lut[self.image_class[i], self.image_class[j]]

    def keys_of_group(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.key_group == g)

    def cell_keys(self) -> dict[tuple[int, int], list[int]]:
        """'both' mode: keys of each unordered image-group cell (a <= b) for the group x group table."""
        out: dict[tuple[int, int], list[int]] = {}
        if self.mode != "both":
            return out
        c = self.n_classes
        for a in range(c):
            for b in range(c):
                ga, gb = self.class_group[a], self.class_group[b]
                if ga < 0 or gb < 0:
                    continue
                out.setdefault((min(ga, gb), max(ga, gb)), []).append(int(self.key_lut[a, b]))
        return out


def _ages_array(ages: Sequence[int | None]) -> np.ndarray:
    return np.array([-1 if a is None or a != a else int(a) for a in ages], dtype=np.int64)


def make_grouping(ages: Sequence[int | None], mode: str = "both", age_bins: str | AgeBins = DEFAULT_AGE_BINS,
                  gap_bins: str | AgeBins = DEFAULT_GAP_BINS) -> PairGrouping:
    """Build the pair grouping for images with these ages (None = unknown)."""
    if mode not in MODES:
        raise UserError(f"unknown pair grouping {mode!r}; choose one of {', '.join(MODES)}")
    bins = age_bins if isinstance(age_bins, AgeBins) else AgeBins.parse(age_bins)
    a = _ages_array(ages)
    if mode == "both":
        g = np.array([bins.index(x) if x >= 0 else -1 for x in a], dtype=np.int64)
        n_g = len(bins)
        cls = np.where(g < 0, n_g, g).astype(np.int32)  # class n_g = no group
        c = n_g + 1
        lut = (np.arange(c)[:, None] * c + np.arange(c)[None, :]).astype(np.int32)
        class_group = np.r_[np.arange(n_g), -1]
        key_group = np.full(c * c, -1, dtype=np.int64)
        for k in range(n_g):
            key_group[k * c + k] = k
        return PairGrouping(mode, bins.labels, cls, c, lut, c * c, key_group, True, class_group)
    # mean / gap: classes are ages (0..max, plus one class for unknown)
    amax = int(a.max()) if a.size and a.max() >= 0 else 0
    c = amax + 2
    cls = np.where(a < 0, amax + 1, a).astype(np.int32)
    use = bins if mode == "mean" else (gap_bins if isinstance(gap_bins, AgeBins) else AgeBins.parse(gap_bins))
    n_g = len(use)
    lut = np.full((c, c), n_g, dtype=np.int32)  # key n_g = none
    for x in range(amax + 1):
        for y in range(amax + 1):
            v = (x + y) / 2.0 if mode == "mean" else abs(x - y)
            gi = use.index(v)
            if gi >= 0:
                lut[x, y] = gi
    key_group = np.r_[np.arange(n_g), -1]
    return PairGrouping(mode, use.labels, cls, c, lut, n_g + 1, key_group, False)


def describe_mode(mode: str) -> str:
    return {
        "both": "a pair belongs to an age group when both images are in it; cross-group pairs count only overall",
        "mean": "a pair's age group is the bin of the mean of its two ages (NIST FRVT)",
        "gap": "a pair's group is the bin of its age gap |a1 - a2| (genuine and impostor pairs alike)",
    }[mode]


def image_groups(ages: Sequence[int | None], age_bins: str | AgeBins = DEFAULT_AGE_BINS) -> np.ndarray:
    """Per-image bin index (-1 = none), for per-image protocols (identification, instance level)."""
    bins = age_bins if isinstance(age_bins, AgeBins) else AgeBins.parse(age_bins)
    return np.array([bins.index(x) for x in ages], dtype=np.int64)

