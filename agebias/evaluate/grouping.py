"""Age groups of images and of pairs.

Age bins follow :mod:`agebias.data.ages` (``0-12,13-19,20-39,40-69``: inclusive whole years, ``70+`` open).

A pair's group, by ``mode``. Genuine and impostor pairs are grouped by different rules in ``mean`` and ``gap``
mode, because the age of a *pair* is only meaningful for one person photographed twice:

- ``both`` (default): a pair, genuine or impostor, belongs to age group g when both images are in g. Pairs whose
  images fall in different bins (or whose age is unknown / outside every bin) are *cross-group*: they are left out
  of the per-group tables but counted in the overall row; their impostor counts appear in the group x group table.
- ``mean``: a *genuine* pair belongs to the bin of the mean of its two ages (NIST FRVT bins genuine pairs so);
  an *impostor* pair belongs to group g only when both images are in g, as in ``both`` (an impostor pair of a
  5- and a 65-year-old would otherwise land in 20-39 and dilute that group's FMR with easy cross-age pairs);
  cross-group impostors appear in the group x group table only.
- ``gap``: the groups are age-gap bins (default ``0-5,6-10,11-20,21+``). A *genuine* pair belongs to the bin of
  |a1 - a2|; an *impostor* pair counts in a gap bin only when both images are in the same age group (``age_bins``)
  and their gap is in that bin, so FMR per gap bin is defined without cross-age impostors. The group x group
  table (age groups) lists every impostor pair whose two ages are known and binned.

For the streamed engine every image gets a small integer *class* (its age group in ``both`` mode, its age in
``mean``/``gap`` mode) and pairs get an integer *key* from a class x class look-up table. A key fixes the pair's
genuine group (``gen_key_group``), its impostor group (``key_group``) and its cell of the group x group table;
only key combinations that occur are numbered, so the engine's per-key histograms stay few.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from agebias.data.ages import DEFAULT_AGE_BINS, AgeBins
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
    key_group: np.ndarray        # (K,) int: reported group of an *impostor* pair with this key, -1 = none
    separable: bool              # key = row_part[a] + col_part[b]
    class_group: np.ndarray | None = None  # (C,) age group of each class (-1 = none): the group x group table
    gen_key_group: np.ndarray | None = None  # (K,) reported group of a *genuine* pair with this key (-1 = none)
    cell_labels: list[str] = field(default_factory=list)  # age groups of the group x group table

    def __post_init__(self) -> None:
        if self.gen_key_group is None:
            self.gen_key_group = self.key_group
        if not self.cell_labels:
            self.cell_labels = list(self.labels)

    def pair_keys(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self.key_lut[self.image_class[i], self.image_class[j]]

    def genuine_groups(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Reported group of the genuine pairs (i, j) (-1 = none)."""
        return self.gen_key_group[self.pair_keys(i, j)]

    def keys_of_group(self, g: int) -> np.ndarray:
        """Keys of the *impostor* pairs of reported group g."""
        return np.flatnonzero(self.key_group == g)

    def cell_keys(self) -> dict[tuple[int, int], list[int]]:
        """Keys of each unordered age-group cell (a <= b, indices into ``cell_labels``) for the group x group
        impostor table."""
        out: dict[tuple[int, int], set[int]] = {}
        if self.class_group is None:
            return {}
        c = self.n_classes
        for a in range(c):
            for b in range(c):
                ga, gb = self.class_group[a], self.class_group[b]
                if ga < 0 or gb < 0:
                    continue
                out.setdefault((min(ga, gb), max(ga, gb)), set()).add(int(self.key_lut[a, b]))
        return {cell: sorted(keys) for cell, keys in out.items()}


def ages_array(ages: Sequence[int | None]) -> np.ndarray:
    """Ages as int64, -1 for unknown (None or NaN)."""
    return np.array([-1 if a is None or a != a else int(a) for a in ages], dtype=np.int64)


def as_bins(bins: str | AgeBins) -> AgeBins:
    """``bins`` parsed (``0-12,13-19,...``) unless already :class:`AgeBins`."""
    return bins if isinstance(bins, AgeBins) else AgeBins.parse(bins)


def make_grouping(ages: Sequence[int | None], mode: str = "both", age_bins: str | AgeBins = DEFAULT_AGE_BINS,
                  gap_bins: str | AgeBins = DEFAULT_GAP_BINS) -> PairGrouping:
    """Build the pair grouping for images with these ages (None = unknown)."""
    if mode not in MODES:
        raise UserError(f"unknown pair grouping {mode!r}; choose one of {', '.join(MODES)}")
    bins = as_bins(age_bins)
    a = ages_array(ages)
    if mode == "both":
        g = bins.assign(a)  # unknown ages (-1) fall in no bin
        n_g = len(bins)
        cls = np.where(g < 0, n_g, g).astype(np.int32)  # class n_g = no group
        c = n_g + 1
        lut = (np.arange(c)[:, None] * c + np.arange(c)[None, :]).astype(np.int32)
        class_group = np.r_[np.arange(n_g), -1]
        key_group = np.full(c * c, -1, dtype=np.int64)
        for k in range(n_g):
            key_group[k * c + k] = k
        return PairGrouping(mode, bins.labels, cls, c, lut, c * c, key_group, True, class_group)
    return _age_class_grouping(a, mode, bins, gap_bins)


def _age_class_grouping(a: np.ndarray, mode: str, bins: AgeBins, gap_bins: str | AgeBins) -> PairGrouping:
    """``mean`` / ``gap``: classes are ages (0..max, plus one class for unknown); see the module notes."""
    amax = int(a.max()) if a.size and a.max() >= 0 else 0
    c = amax + 2
    cls = np.where(a < 0, amax + 1, a).astype(np.int32)
    use = bins if mode == "mean" else as_bins(gap_bins)
    n_g, n_b = len(use), len(bins)
    class_group = np.array([bins.index(x) for x in range(amax + 1)] + [-1], dtype=np.int64)
    gen = np.full((c, c), n_g, dtype=np.int64)  # reported group of a genuine pair (n_g = none)
    for x in range(amax + 1):
        for y in range(amax + 1):
            gi = use.index((x + y) / 2.0 if mode == "mean" else abs(x - y))
            if gi >= 0:
                gen[x, y] = gi
    cg = np.where(class_group < 0, n_b, class_group)  # age group per class, n_b = none
    lo, hi = np.minimum(cg[:, None], cg[None, :]), np.maximum(cg[:, None], cg[None, :])
    cell = lo * (n_b + 1) + hi
    combo = gen * (n_b + 1) ** 2 + cell
    used, lut = np.unique(combo, return_inverse=True)
    lut = lut.reshape(c, c).astype(np.int32)
    key_gen = used // (n_b + 1) ** 2
    key_lo, key_hi = (used % (n_b + 1) ** 2) // (n_b + 1), used % (n_b + 1)
    same = (key_lo == key_hi) & (key_lo < n_b)  # both images in one age group
    gen_key_group = np.where(key_gen < n_g, key_gen, -1)
    if mode == "mean":
        key_group = np.where(same, key_lo, -1)
    else:
        key_group = np.where(same & (key_gen < n_g), key_gen, -1)
    return PairGrouping(mode, use.labels, cls, c, lut, int(used.size), key_group.astype(np.int64), False,
                        class_group, gen_key_group.astype(np.int64), bins.labels)


def describe_mode(mode: str) -> str:
    return {
        "both": "a pair belongs to an age group when both images are in it; cross-group pairs count only overall",
        "mean": "a genuine pair's age group is the bin of the mean of its two ages (NIST FRVT); an impostor pair "
                "counts in a group only when both images are in it (cross-group impostors: group x group table "
                "only)",
        "gap": "a genuine pair's group is the bin of its age gap |a1 - a2|; an impostor pair counts in a gap bin "
               "only when both images share an age group and their gap is in the bin",
    }[mode]


def image_groups(ages: Sequence[int | None], age_bins: str | AgeBins = DEFAULT_AGE_BINS) -> np.ndarray:
    """Per-image bin index (-1 = none), for per-image protocols (identification, instance level)."""
    bins = as_bins(age_bins)
    return bins.assign(ages)
