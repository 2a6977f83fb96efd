"""All pairs i < j of a test set, scored by cosine in blocks in one pass; memory O(N*D + block^2 + kept scores).

**Scores.** Embeddings are L2-normalised (float32); a score is the float32 dot product of two unit vectors. Images
are ordered by (pair class, subject) (classes: :mod:`agebias.evaluate.grouping`), so that the pair *key* (the
pair's age-group cell) is constant on a few rectangles of each ``block x block`` tile of the upper triangle. Genuine
pairs (same subject) are read out of the tiles exactly, with their indices, and masked there.

**Impostors, small sets** (pairs <= ``keep_all_pairs``): every impostor score is kept (score, key, indices); every
metric is computed from the exact arrays.

**Impostors, large sets** (e.g. N = 30,000: 450 M pairs): one streamed pass. Each tile adds to a histogram of 2^16
bins over [-1.0009765625, 1.0009765625] per key; the bin of a score is ``int(clip(float32(s * A + C)))``, a
monotone function of the float32 score, so every count "scores in bins >= b" is exact. In the same pass the engine
keeps exactly (as float32 scores per key, the key being the list they are in):

1. *the reservoir*: per key, every score in bins >= a cut. The cut only rises during the pass (it starts at the
   pilot's lower estimate and is recomputed from the counts so far, which can only place it at or below the final
   one; should the pilot have overshot, the bins in between are not exact) and ends at the bin of the M-th highest
   pooled impostor, M = k + 1 of the largest FMR up to ``RESERVOIR_FMR`` = 1e-2 among those asked for
   (:class:`ExactNeeds`: the target, ``fmr_targets``, curve FMRs, the instance-level FPR): 4.5 M scores for 450 M
   pairs. Each group's keys are kept likewise down to the group's own M_g (its thresholds at ``fmr_targets``). So
   these thresholds, and every key's count at them, are exact whatever the data;
2. the pair indices of the impostors in bins >= the accepted-pairs cut (the M_A highest, M_A = k + 1 of the
   operating point and of the instance-level FPR; or every pair at or above a fixed threshold), for the subject
   bootstrap and the instance-level protocol;
3. *windows*: bin ranges around the EER crossing, overall and per group (the crossing bin and its occupied
   neighbours), and around thresholds at FMRs above 1e-2 (curve points up to 0.1). They are planned before the pass
   from a *pilot*: a seeded sample of rows scored against all images (about 4e6 pairs, at most N / 16 rows) in 16
   row chunks, whose spread gives a band of 6 standard deviations around the estimated impostor survival function
   (genuine scores are scored directly, subject by subject);
4. keys with at most ``keep_all_pairs / n_keys`` pairs whole.

Metrics then take counts from the histogram and order inside a bin from the kept scores. A question about a bin that
was not kept is recorded (``missing``); :meth:`PairScores.refine` makes one more pass for those bins (only when the
pilot misjudged a window; ``passes`` says how many passes were made). So thresholds, FMR/FNMR counts, EER and the
FNMR at every target FMR are exact (identical to the all-in-memory computation on the same float32 scores). Two
quantities come from the histogram in streamed mode and say so in the results: the impostor mean and variance for
d' (bin centres with Sheppard's correction; error well below 1e-4 for unit-vector cosines) and AUC (scores sharing
a bin with a genuine score count as ties; the largest possible error is reported as ``auc_error_bound``).

**Counting.** With numba installed, a compiled pass (:mod:`agebias.evaluate.tile_kernel`) bins each tile and lists
the scores the rule keeps in one read; else numpy does it in several passes (torch's bincount when torch is
loaded). Both count the bins of :func:`agebias.evaluate.bins.bin_index` and keep the same scores.

**Threads.** Tiles are processed on a thread pool (``AGEBIAS_EVAL_THREADS``, default min(cores, 8)); BLAS is then
limited to one thread per product (and torch, when it counts the bins, to one thread) so that the cores share
tiles; numpy, torch and the compiled pass release the GIL, so the binning work is parallel too. Every tile is
computed with the same shapes in every pass, so its scores are bit-identical; the engine checks that each exact bin
holds as many scores as the histogram counted.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import numpy as np

from agebias.evaluate import tile_kernel
from agebias.evaluate.bins import A32, C32, LO, MASKED, NB, _ceil32, bin_floor, bin_index, tau_bin
from agebias.evaluate.grouping import PairGrouping
from agebias.evaluate.metrics import DEFAULT_TARGETS, ExactDist, _thin_curve, max_allowed_false_matches
from agebias.progress import bar

DEFAULT_BLOCK = 2048
CANDIDATES = 1 << 20            # scores a tile kernel call may pass to the rule (more: numpy selects)
DEFAULT_KEEP_ALL = 2_000_000
RESERVOIR_FMR = 1e-2           # thresholds at FMRs up to this are kept by the reservoir; higher ones by windows
RESERVOIR_MAX = 1 << 26        # most scores the reservoir may be asked to hold (256 MB); thresholds beyond: windows
PILOT_PAIRS = 4_000_000        # pairs scored by the pilot (at most 1/16 of all rows)
PILOT_CHUNKS = 16              # row chunks of the pilot: their spread gives the band
PILOT_MIN_PAIRS = 200          # a set with fewer pilot pairs is kept whole
PILOT_Z = 6.0                  # half-width of the band in standard deviations
PLAN_SUBJECT = 2048            # a bigger subject's genuine pairs are planned from a sample of its images
EER_MARGIN = 2                 # bins added on both sides of an EER window (its occupied neighbours)

T = TypeVar("T")


@dataclass(frozen=True)
class ExactNeeds:
    """What the streamed engine must answer exactly in its one pass (:mod:`agebias.evaluate.allpairs` derives it
    from the settings).

    ``fmrs``: target FMRs on the pooled impostors (the threshold, and every key's count at it); ``group_fmrs``:
    target FMRs within each reported group (the group's own threshold); ``accept_fmrs``: target FMRs whose accepted
    impostor pairs are listed with their indices; ``thresholds``: fixed thresholds (every key's count at them;
    their accepted pairs listed); ``eer`` / ``group_eer``: exact EER overall / per group; ``max_accepted``: the
    most pairs listed (beyond it accepted pairs are not available)."""

    fmrs: tuple[float, ...] = DEFAULT_TARGETS
    group_fmrs: tuple[float, ...] = DEFAULT_TARGETS
    accept_fmrs: tuple[float, ...] = ()
    thresholds: tuple[float, ...] = ()
    eer: bool = True
    group_eer: bool = True
    max_accepted: int = 30_000_000


class BinnedDist:
    """An impostor score multiset known by its histogram plus the exact scores of some bins (see module doc).

    ``exact[b]``: every score of bin b is known; ``values_of_bin(b)`` returns them sorted (float64). Asking for a
    bin that is not exact records it in ``missing`` and answers with a stand-in (planning mode)."""

    def __init__(self, hist: np.ndarray, exact: np.ndarray, values_of_bin: Callable[[int], np.ndarray],
                 missing: set[int]):
        self.hist = np.asarray(hist, dtype=np.int64)
        self.suffix = np.zeros(NB + 1, dtype=np.int64)
        self.suffix[:NB] = np.cumsum(self.hist[::-1])[::-1]
        self.n = int(self.suffix[0])
        self.exact = exact
        self._values_of_bin = values_of_bin
        self._cache: dict[int, np.ndarray] = {}
        self.missing = missing
        self.auc_error_bound = math.nan

    def _bin_values(self, b: int) -> np.ndarray | None:
        b = int(b)
        if self.hist[b] == 0:
            return np.zeros(0)
        if not self.exact[b]:
            self.missing.add(b)
            return None
        if b not in self._cache:
            self._cache[b] = self._values_of_bin(b)
        return self._cache[b]

    def count_ge(self, tau: float) -> int:
        if self.n == 0 or tau == math.inf or tau != tau:
            return 0
        if tau == -math.inf:
            return self.n
        t32 = _ceil32(tau)
        b = int(bin_index(np.array([t32]))[0])
        pb = int(bin_index(np.array([np.nextafter(t32, np.float32(-np.inf))]))[0])
        if pb < b or self.hist[b] == 0:  # t32 is the lowest float32 of bin b, or the bin is empty
            return int(self.suffix[b])
        vals = self._bin_values(b)
        inside = 0 if vals is None else int(vals.size - np.searchsorted(vals, np.float64(tau), side="left"))
        return int(self.suffix[b + 1] + inside)

    def kth_largest(self, k: int) -> float:
        b = int(np.searchsorted(-self.suffix, -k, side="right") - 1)
        r = k - int(self.suffix[b + 1])
        vals = self._bin_values(b)
        if vals is None:
            return float(bin_floor(b)[0])
        return float(vals[vals.size - r])

    def moments(self) -> tuple[float, float]:
        if self.n == 0:
            return math.nan, math.nan
        w = 1.0 / float(A32)
        centres = LO + (np.arange(NB) + 0.5) * w
        m = float((self.hist * centres).sum() / self.n)
        v = float((self.hist * (centres - m) ** 2).sum() / self.n) - w * w / 12.0
        return m, max(v, 0.0)

    def _gen_bins(self, gen: ExactDist) -> np.ndarray:
        return bin_index(gen.values.astype(np.float32))

    def eer_candidates(self, gen: ExactDist):
        """The pooled values of the crossing bin and its two occupied neighbours (where the EER minimiser lies)."""
        gb = self._gen_bins(gen)
        gh = np.bincount(gb, minlength=NB)
        gen_lt = np.concatenate([[0], np.cumsum(gh)])  # gen_lt[b] = genuine in bins < b
        d = self.suffix / self.n - gen_lt / gen.n
        bstar = int(np.flatnonzero(d[:NB] >= 0).max())
        occ = np.flatnonzero((self.hist > 0) | (gh > 0))
        pos = int(np.searchsorted(occ, bstar))
        prev = int(occ[pos - 1]) if pos > 0 else None
        nxt = int(occ[pos + 1]) if pos + 1 < occ.size else None
        window = [b for b in (prev, bstar, nxt) if b is not None]
        vals = [self._bin_values(b) for b in window]
        if any(v is None for v in vals):
            u = np.array([float(bin_floor(bstar)[0])])
            return u, np.array([self.suffix[bstar]]), math.nan, math.nan, prev is None, nxt is None
        imp_w = np.sort(np.concatenate(vals))
        in_w = np.isin(gb, window)
        u = np.unique(np.concatenate([gen.values[in_w], imp_w]))
        above = int(self.suffix[window[-1] + 1])
        imp_ge = above + imp_w.size - np.searchsorted(imp_w, u, side="left")
        # below the window only the histogram is known: its lower edge stands in for the next value down, so the
        # candidate under u[0] gets a threshold with the same rates (between every lower score and u[0])
        lower_edge = float(bin_floor(window[0])[0])
        return u, imp_ge, lower_edge, math.nan, prev is None, nxt is None

    def curve_points(self, gen: ExactDist, max_points: int = 600):
        """ROC points at bin boundaries (exact counts; thresholds are the nominal bin edges)."""
        gh = np.bincount(self._gen_bins(gen), minlength=NB)
        gen_ge = np.zeros(NB + 1, dtype=np.int64)
        gen_ge[:NB] = np.cumsum(gh[::-1])[::-1]
        b = np.arange(NB, -1, -1)
        thr = LO + b / float(A32)
        imp_ge, g_ge = self.suffix[b], gen_ge[b]
        keep = _thin_curve(imp_ge / max(self.n, 1), max_points)
        return thr[keep], imp_ge[keep], g_ge[keep]

    def auc(self, gen: ExactDist) -> float:
        if self.n == 0 or gen.n == 0:
            return math.nan
        gb = self._gen_bins(gen)
        below = self.n - self.suffix[gb]  # impostors in bins < b
        same = self.hist[gb]
        self.auc_error_bound = float(0.5 * same.sum() / (gen.n * self.n))
        return float((below.sum() + 0.5 * same.sum()) / (gen.n * self.n))


@dataclass
class PairScores:
    """Result of scoring all pairs: genuine pairs exactly, impostors exactly (small sets) or binned with exact
    reservoir and windows (large sets; see the module doc). Indices are original image indices."""

    n_images: int
    grouping: PairGrouping
    subjects: np.ndarray        # (N,) int subject code per image (original order)
    gen_i: np.ndarray           # genuine pairs, gen_i < gen_j, in lexicographic order
    gen_j: np.ndarray
    gen_score: np.ndarray       # float32
    max_impostor: np.ndarray    # (N,) highest impostor score per image (-inf if none)
    streamed: bool
    # keep-all mode
    imp_score: np.ndarray | None = None
    imp_key: np.ndarray | None = None
    imp_i: np.ndarray | None = None
    imp_j: np.ndarray | None = None
    # streamed mode
    hist: np.ndarray | None = None          # (K, NB) int64
    exact: np.ndarray | None = None         # (K, NB) bool: every score of (key, bin) is in kept_values
    kept_values: list = field(default_factory=list)  # per key: float32 scores, ascending (so ordered by bin)
    kept_bins: list = field(default_factory=list)    # per key: their bins (uint16, ascending)
    accepted_from_bin: int | None = None    # every impostor pair with bin >= this is in acc_*
    acc_i: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    acc_j: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    acc_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    missing: set = field(default_factory=set)
    passes: int = 1
    counting: str = ""                      # streamed mode: what counted the tiles (compiled kernel or numpy)
    _engine: "_Engine | None" = None

    @property
    def n_impostor_total(self) -> int:
        if not self.streamed:
            return int(self.imp_score.size)
        return int(self.hist.sum())

    def genuine_keys(self) -> np.ndarray:
        return self.grouping.pair_keys(self.gen_i, self.gen_j)

    def impostor_dist(self, keys=None):
        """Impostor scores of pairs whose key is in ``keys`` (None = all pairs)."""
        if not self.streamed:
            s = self.imp_score if keys is None else self.imp_score[np.isin(self.imp_key, keys)]
            return ExactDist(s)
        ks = np.arange(self.hist.shape[0]) if keys is None else np.asarray(keys, dtype=np.int64)
        hist = self.hist[ks].sum(axis=0)
        exact = self.exact[ks].all(axis=0)

        def values_of_bin(b: int) -> np.ndarray:
            parts = []
            for k in ks:
                bins = self.kept_bins[k]
                lo, hi = np.searchsorted(bins, np.uint16(b), "left"), np.searchsorted(bins, np.uint16(b), "right")
                parts.append(self.kept_values[k][lo:hi])
            v = np.sort(np.concatenate(parts).astype(np.float64))
            if v.size != hist[b]:
                raise RuntimeError(f"bin {b}: {v.size} kept scores but {hist[b]} counted")
            return v

        return BinnedDist(hist, exact, values_of_bin, self.missing)

    def accepted_impostors(self, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, key) of every impostor pair with score >= tau (original indices)."""
        if not self.streamed:
            m = self.imp_score >= np.float64(tau)
            return self.imp_i[m], self.imp_j[m], self.imp_key[m]
        if self.accepted_from_bin is None or tau_bin(tau) < self.accepted_from_bin:
            raise RuntimeError("accepted pairs were not collected down to this threshold")
        m = self.acc_score >= np.float64(tau)
        i, j = self.acc_i[m], self.acc_j[m]
        return i, j, self.grouping.pair_keys(i, j)

    def refine(self, bins: set[int], accepted_from_bin: int | None = None) -> None:
        """One more streamed pass: keep the exact scores of ``bins`` (every key) and, when ``accepted_from_bin`` is
        given, the indices of every impostor pair from that bin up."""
        if not self.streamed:
            return
        self._engine.collect(self, set(int(b) for b in bins), accepted_from_bin)
        self.passes += 1


def exactly(ps: PairScores, compute: Callable[[PairScores], T],
            accepted_from: Callable[[T], int | None] = lambda _: None, max_passes: int = 4) -> T:
    """``compute(ps)`` evaluated until no bin it asked for is missing (refining the scores in between).

    ``accepted_from(result)``: the lowest bin whose accepted pairs the caller still needs listed (None: none)."""
    res = compute(ps)
    for _ in range(max_passes):
        acc = accepted_from(res)
        if not ps.missing and acc is None:
            return res
        bins = set(ps.missing)
        ps.missing.clear()
        ps.refine(bins, acc)
        res = compute(ps)
    if ps.missing:
        raise RuntimeError("exact refinement did not converge")
    return res


def _workers() -> int:
    env = os.environ.get("AGEBIAS_EVAL_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(os.cpu_count() or 1, 8))


def run_tiles(tiles: list, work, make_state, description: str) -> list:
    """Apply ``work(tile, state)`` to every tile on a thread pool (numpy and BLAS release the GIL); each thread has
    its own ``state`` from ``make_state()``, all returned for merging. With several threads BLAS is limited to
    one thread per call, so the cores are shared by tiles instead of inside one product."""
    n_threads = _workers()
    states: list = []
    local = threading.local()
    lock = threading.Lock()

    def run(tile):
        st = getattr(local, "state", None)
        if st is None:
            st = local.state = make_state()
            with lock:
                states.append(st)
        work(tile, st)

    with bar(len(tiles), description) as pbar:
        if n_threads == 1:
            for t in tiles:
                run(t)
                pbar.update(1)
            return states
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(n_threads) as pool:
            for _ in pool.map(run, tiles):
                pbar.update(1)
    return states


def _cut(hist: np.ndarray, m: int) -> int:
    """The highest bin b >= 1 with at least m scores in bins >= b (1 when there are fewer; NB when m <= 0)."""
    if m <= 0:
        return NB
    suf = np.cumsum(hist[:0:-1])[::-1]  # suf[b - 1] = scores in bins >= b, b >= 1
    return max(1, int(np.count_nonzero(suf >= m)))


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


@dataclass(frozen=True)
class _Rule:
    """Float thresholds of one moment of the pass: keep a score of key k iff >= v_cut[k] or inside one of
    windows[k] ([lo, hi) in score); list its pair iff >= v_acc. ``pre[k]``: the lowest of them (a first filter)."""

    cut: np.ndarray
    v_cut: np.ndarray
    windows: list
    acc_cut: int
    v_acc: float
    pre: np.ndarray
    tables: dict = field(default_factory=dict, compare=False, repr=False)  # key -> keep_table(key), made on use

    def select(self, k: int, v: np.ndarray) -> np.ndarray:
        m = v >= self.v_cut[k]
        for lo, hi in self.windows[k]:
            m |= (v >= lo) & (v < hi)
        return m

    def keep_table(self, k: int) -> np.ndarray:
        """(NB,) uint8: 1 for the bins whose scores key k keeps or lists (``select`` or >= ``v_acc``). Every
        threshold is a bin floor, so a score is kept iff its bin is: the rule applied to each bin's floor."""
        table = self.tables.get(k)
        if table is None:
            floors = _bin_floors()
            table = self.tables[k] = (self.select(k, floors) | (floors >= self.v_acc)).astype(np.uint8)
        return table


class _Keep:
    """What a streamed pass keeps exactly, per key (see the module doc); cuts rise as the counts come in."""

    def __init__(self, grouping: PairGrouping, m_all: int, m_group: np.ndarray, m_acc: int, acc_fixed: int | None,
                 windows: list[list[tuple[int, int]]], full: np.ndarray, max_accepted: int,
                 start: np.ndarray | None = None):
        self.start = np.ones(m_group.size + 2, dtype=np.int64) if start is None else start  # all, groups, accepted
        self.key_group = grouping.key_group
        self.n_keys = grouping.n_keys
        self.m_all, self.m_group, self.m_acc, self.acc_fixed = m_all, m_group, m_acc, acc_fixed
        self.windows = [_merge_ranges([(max(lo, 1), hi) for lo, hi in w if hi >= 1]) for w in windows]  # bin 0: masked
        self._win_f = [[(lo, float(bin_floor(lo)[0]), float(bin_floor(hi + 1)[0])) for lo, hi in w]
                       for w in self.windows]
        self.full = full
        self.max_accepted = max_accepted
        self.run = np.zeros((1 + m_group.size, NB), dtype=np.int64)  # counts so far: all keys, each group
        self.lock = threading.Lock()
        self.n_accepted = 0
        self.overflow = False
        self.seen = self.seen_at_rule = 0
        self.rule = self._rule()

    def _rule(self) -> _Rule:
        cut_all = max(_cut(self.run[0], self.m_all), int(self.start[0]))
        cut_grp = np.array([max(_cut(self.run[1 + g], int(m)), int(self.start[1 + g]))
                            for g, m in enumerate(self.m_group)], dtype=np.int64)
        g = self.key_group
        cut = np.where(g >= 0, np.minimum(cut_all, cut_grp[np.maximum(g, 0)] if cut_grp.size else cut_all), cut_all)
        cut = np.where(self.full, 1, cut).astype(np.int64)
        acc = max(_cut(self.run[0], self.m_acc), int(self.start[-1]))
        if self.acc_fixed is not None:
            acc = min(acc, self.acc_fixed)
        if self.overflow:
            acc = NB
        v_cut = bin_floor(cut)
        v_acc = float(bin_floor(acc)[0])
        windows, pre = [], np.empty(self.n_keys, dtype=np.float32)
        for k in range(self.n_keys):
            vc = float(v_cut[k])
            w = [(flo, min(fhi, vc)) for lo, flo, fhi in self._win_f[k] if lo < cut[k]]
            windows.append(w)
            pre[k] = min([vc, v_acc] + [flo for flo, _ in w])
        return _Rule(cut, v_cut, windows, acc, v_acc, pre)

    def observe(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Counts of one tile (rows: ``keys``); the cuts rise accordingly, recomputed whenever the counts have grown
        by a tenth since the last time (a cut from fewer counts is lower, so always safe)."""
        total = counts.sum(axis=0)
        groups = self.key_group[keys]
        n = int(total.sum())
        with self.lock:
            self.run[0] += total
            for row, g in zip(counts, groups, strict=True):
                if g >= 0:
                    self.run[1 + g] += row
            self.seen += n
            if self.seen >= 1.1 * self.seen_at_rule:
                self.seen_at_rule = self.seen
                self.rule = self._rule()

    def accepted(self, n: int) -> None:
        """``n`` more pairs listed; above ``max_accepted`` with a fixed threshold, listing stops."""
        if self.acc_fixed is None:
            return
        with self.lock:
            self.n_accepted += n
            if self.n_accepted > self.max_accepted and not self.overflow:
                self.overflow = True
                self.rule = self._rule()

    def final(self, hist: np.ndarray) -> _Rule:
        with self.lock:
            self.run[0] = hist.sum(axis=0)
            for g in range(self.m_group.size):
                self.run[1 + g] = hist[self.key_group == g].sum(axis=0)
            self.rule = self._rule()
            return self.rule

    def exact_bins(self, rule: _Rule) -> np.ndarray:
        """(K, NB) bool: bins whose every score the pass kept."""
        ex = np.arange(NB)[None, :] >= rule.cut[:, None]
        for k, w in enumerate(self.windows):
            for lo, hi in w:
                ex[k, lo:hi + 1] = True
        ex[:, 0] = True  # bin 0 holds no real score (|cosine| <= 1)
        return ex


class _Engine:
    """One scoring job: images in (class, subject) order, the tiles of the upper triangle, genuine pairs and the
    number of impostor pairs per key."""

    def __init__(self, emb: np.ndarray, codes: np.ndarray, grouping: PairGrouping, block: int):
        cls = grouping.image_class.astype(np.int64)
        self.order = np.lexsort((codes, cls))
        self.emb = np.ascontiguousarray(emb[self.order], dtype=np.float32)
        self.subj = codes[self.order]
        self.cls = cls[self.order]
        self.grouping = grouping
        self.block = b = block
        self.n = n = self.emb.shape[0]
        starts = np.flatnonzero(np.r_[True, self.cls[1:] != self.cls[:-1]]) if n else np.zeros(0, np.int64)
        self.run_start, self.run_end = starts, np.r_[starts[1:], n].astype(np.int64)
        self.tiles = [(r0, min(r0 + b, n), c0, min(c0 + b, n)) for r0 in range(0, n, b) for c0 in range(r0, n, b)]
        self.tri = np.tril(np.ones((min(b, n), min(b, n)), dtype=bool))  # not a pair i < j (diagonal tiles)
        p, q = self._genuine_positions()
        nb = -(-n // b)
        rb, cb = p // b, q // b
        tile = rb * nb - rb * (rb - 1) // 2 + (cb - rb)  # index in self.tiles (row-major upper triangle)
        o = np.argsort(tile, kind="stable")
        self.gen_p, self.gen_q = p[o], q[o]
        self.gen_bounds = np.searchsorted(tile[o], np.arange(len(self.tiles) + 1))
        self.gen_score = np.empty(p.size, dtype=np.float32)
        k = grouping.n_keys
        cc = np.bincount(self.cls, minlength=grouping.n_classes).astype(np.int64)
        a, c = np.triu_indices(grouping.n_classes, 1)
        n_key = np.zeros(k, dtype=np.int64)
        np.add.at(n_key, grouping.key_lut[a, c], cc[a] * cc[c])
        d = np.arange(grouping.n_classes)
        np.add.at(n_key, grouping.key_lut[d, d], cc * (cc - 1) // 2)
        self.gen_key = grouping.key_lut[self.cls[self.gen_p], self.cls[self.gen_q]]
        self.n_key = n_key - np.bincount(self.gen_key, minlength=k)

    def _genuine_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every pair p < q of positions of one subject."""
        by = np.argsort(self.subj, kind="stable")  # positions grouped by subject, ascending within
        s = self.subj[by]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if s.size else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, s.size])
        ps, qs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for m in np.unique(sizes[sizes >= 2]):
            pos = by[starts[sizes == m][:, None] + np.arange(m)]  # (subjects, m)
            iu, ju = np.triu_indices(int(m), 1)
            ps.append(pos[:, iu].ravel())
            qs.append(pos[:, ju].ravel())
        return np.concatenate(ps).astype(np.int64), np.concatenate(qs).astype(np.int64)

    def rects(self, tile) -> list[tuple[int, int, int, int, int]]:
        """(row0, row1, col0, col1, key) in tile coordinates: the key is constant on each rectangle; rectangles
        wholly below the diagonal are left out."""
        r0, r1, c0, c1 = tile
        rows = range(int(np.searchsorted(self.run_end, r0, "right")), int(np.searchsorted(self.run_start, r1, "left")))
        cols = range(int(np.searchsorted(self.run_end, c0, "right")), int(np.searchsorted(self.run_start, c1, "left")))
        out = []
        for i in rows:
            ra, rb = max(int(self.run_start[i]), r0), min(int(self.run_end[i]), r1)
            for j in cols:
                ca, cb = max(int(self.run_start[j]), c0), min(int(self.run_end[j]), c1)
                if ra >= cb - 1:
                    continue
                key = int(self.grouping.key_lut[self.cls[ra], self.cls[ca]])
                out.append((ra - r0, rb - r0, ca - c0, cb - c0, key))
        return out

    def tile_scores(self, t: int, st, record: bool) -> np.ndarray:
        """Scores of tile t with non-pairs and genuine pairs set to ``MASKED``; with ``record`` the genuine scores and the
        per-image highest impostor are stored."""
        r0, r1, c0, c1 = self.tiles[t]
        s = st.out.reshape(-1)[: (r1 - r0) * (c1 - c0)].reshape(r1 - r0, c1 - c0)  # C-contiguous
        np.matmul(self.emb[r0:r1], self.emb[c0:c1].T, out=s)
        if r0 == c0:
            s[self.tri[: r1 - r0, : c1 - c0]] = MASKED
        lo, hi = self.gen_bounds[t], self.gen_bounds[t + 1]
        if hi > lo:
            lp, lq = self.gen_p[lo:hi] - r0, self.gen_q[lo:hi] - c0
            if record:
                self.gen_score[lo:hi] = s[lp, lq]
            s[lp, lq] = MASKED
        if record:
            m = st.max
            np.maximum(m[r0:r1], s.max(axis=1), out=m[r0:r1])
            np.maximum(m[c0:c1], s.max(axis=0), out=m[c0:c1])
        return s

    def make_state(self, hist: bool):
        b = min(self.block, max(self.n, 1))
        return _State(np.empty((b, b), np.float32), np.empty((b, b), np.float32), np.empty((b, b), _bin_dtype()),
                      np.zeros((self.grouping.n_keys, NB), np.int64) if hist else None,
                      np.full(self.n, -np.inf, dtype=np.float32))

    # ------------------------------------------------------------------ keep-all pass

    def keep_all(self):
        """Every impostor pair kept: (states, scores, p, q, keys), positions in engine order, in no set order."""
        def work(t, st):
            s = self.tile_scores(t, st, record=True)
            r0, _, c0, _ = self.tiles[t]
            for ra, rb, ca, cb, key in self.rects(self.tiles[t]):
                sub = s[ra:rb, ca:cb]
                idx = np.flatnonzero(sub > MASKED)
                rr, cc = np.divmod(idx, cb - ca)
                st.acc_v.append(sub[rr, cc])
                st.acc_p.append(rr + ra + r0)
                st.acc_q.append(cc + ca + c0)
                st.acc_k.append(np.full(idx.size, key, np.int32))

        states = run_tiles(list(range(len(self.tiles))), work, lambda: self.make_state(False), "scoring pairs")
        return (states, *(_cat([x for st in states for x in getattr(st, name)], dt) for name, dt in
                          (("acc_v", np.float32), ("acc_p", np.int64), ("acc_q", np.int64), ("acc_k", np.int32))))

    # ------------------------------------------------------------------ streamed pass

    def stream(self, keep: _Keep, count: bool, description: str):
        """One pass: histogram per key (``count``) and the scores/pairs ``keep`` asks for. Counting passes use the
        compiled tile kernel when it is ready (:mod:`agebias.evaluate.tile_kernel`), else numpy; both keep the same."""
        bincount = _bincount()
        compiled = count and tile_kernel.ready()

        def work(t, st):
            s = self.tile_scores(t, st, record=count)
            h, w = s.shape
            r0, _, c0, _ = self.tiles[t]
            rects = self.rects(self.tiles[t])
            found = None
            if compiled and rects:
                keys, counts, found = _compiled_tile(s, rects, keep.rule, st.cand, r0 == c0)
            elif count and rects:
                keys, counts = _tile_counts(s, rects, st.f[:h, :w], st.i[:h, :w], bincount)
            if count and rects:
                st.hist[keys] += counts
                keep.observe(keys, counts)
            rule = keep.rule
            n_acc = 0
            for key, idx, v in _candidates(s, rects, rule, found):
                sel = rule.select(key, v)
                kept = v[sel]
                st.vals[key].append(kept)
                st.n_vals += kept.size
                if rule.v_acc < np.inf:
                    a = np.flatnonzero(v >= rule.v_acc)
                    if a.size:
                        rr, cc = np.divmod(idx[a], w)
                        st.acc_p.append(rr + r0)
                        st.acc_q.append(cc + c0)
                        st.acc_v.append(v[a])
                        n_acc += a.size
            if n_acc:
                keep.accepted(n_acc)
            if st.n_vals > st.prune_at:
                st.prune(keep.rule)

        with _torch_single_thread():
            return run_tiles(list(range(len(self.tiles))), work, lambda: self.make_state(count), description)

    def plan(self, needs: ExactNeeds, n_key: np.ndarray, m_all: int, m_group: np.ndarray, m_acc: int,
             full: np.ndarray, seed: int) -> tuple[list[list[tuple[int, int]]], np.ndarray]:
        """Bin windows per key for what the reservoir may not reach (EER crossings overall and per group, thresholds
        beyond ``RESERVOIR_FMR``), planned from the pilot (see the module doc), plus fixed thresholds' bins; and
        where the cuts may start: (all, each group..., accepted pairs) at the pilot's lower band, below the final
        cuts unless the band misses (then the bins in between are not exact and a further pass collects them)."""
        gp = self.grouping
        k, n_groups = gp.n_keys, len(gp.labels)
        windows: list[list[tuple[int, int]]] = [[] for _ in range(k)]
        start = np.ones(n_groups + 2, dtype=np.int64)
        for tau in needs.thresholds:
            if tau == tau and abs(tau) != math.inf:
                b = tau_bin(tau)
                for w in windows:
                    w.append((b, b))
        n_all = int(n_key.sum())
        sets = [(np.arange(k), n_all, [t for t in needs.fmrs if max_allowed_false_matches(t, n_all) + 1 > m_all],
                 needs.eer)]
        for g in range(n_groups):
            keys = gp.keys_of_group(g)
            n_g = int(n_key[keys].sum())
            far = [t for t in needs.group_fmrs if max_allowed_false_matches(t, n_g) + 1 > m_group[g]]
            sets.append((keys, n_g, far, needs.group_eer))
        todo = [(i, s) for i, s in enumerate(sets) if s[1] > 0 and not full[s[0]].all() and (s[2] or s[3])]
        if not todo:
            return windows, start
        counts = self._pilot_counts(seed)
        gen_bins, gen_set = self._plan_genuine(seed)
        for i, (keys, n_s, far, eer) in todo:
            c = counts.sum(axis=1) if i == 0 else counts[:, i]  # (J, NB): every pair, or group i - 1
            surv, sd, m = _survival_band(c)
            if m < PILOT_MIN_PAIRS:
                full[keys] = True
                continue
            for j, m_keep in ((i, m_all if i == 0 else m_group[i - 1]), (n_groups + 1, m_acc if i == 0 else 0)):
                if m_keep > 0:
                    start[j] = _last(surv - PILOT_Z * sd >= m_keep / n_s)
            for t in far:
                q = (max_allowed_false_matches(t, n_s) + 1) / n_s
                lo, hi = _last(surv - PILOT_Z * sd >= q), _last(surv + PILOT_Z * sd >= q)
                for kk in keys:
                    windows[kk].append((lo, max(lo, hi)))
            gb = gen_bins if i == 0 else gen_bins[gen_set == i - 1]
            if eer and gb.size:
                cum = np.concatenate([[0], np.cumsum(np.bincount(gb, minlength=NB))])[:NB] / gb.size
                sd_all = np.sqrt(sd ** 2 + cum * (1 - cum) / gb.size)
                lo = _last(surv - PILOT_Z * sd_all - cum >= 0)
                hi = _last(surv + PILOT_Z * sd_all - cum >= 0)
                for kk in keys:
                    windows[kk].append((max(1, lo - EER_MARGIN), min(NB - 1, max(lo, hi) + EER_MARGIN)))
        return windows, start

    def _set_lut(self, genuine: bool = False) -> np.ndarray:
        """(C, C) reported group + 1 of an impostor (or ``genuine``) pair of classes (0: none), in either order."""
        gp = self.grouping
        a = np.arange(gp.n_classes)
        keys = gp.key_lut[np.minimum(a[:, None], a[None, :]), np.maximum(a[:, None], a[None, :])]
        return (gp.gen_key_group if genuine else gp.key_group)[keys] + 1

    def _pilot_counts(self, seed: int) -> np.ndarray:
        """(J, 1 + groups, NB) impostor counts of J chunks of sampled rows against every image (set 0: pairs of no
        group, set g + 1: group g)."""
        n, n_sets = self.n, len(self.grouping.labels) + 1
        r = min(n, max(64, min(PILOT_PAIRS // max(n, 1), n // 16)))
        rows = np.sort(np.random.default_rng(seed).choice(n, r, replace=False))
        scores = self.emb[rows] @ self.emb.T
        scores[self.subj[rows][:, None] == self.subj[None, :]] = -np.inf
        bins = bin_index(scores)
        del scores
        lut = self._set_lut()
        for x in np.unique(self.cls[rows]):
            rows_x = self.cls[rows] == x
            bins[rows_x] += (lut[x, self.cls] * NB).astype(np.int32)[None, :]
        chunks = np.array_split(np.arange(r), min(PILOT_CHUNKS, r))
        out = np.stack([np.bincount(bins[ch].ravel(), minlength=n_sets * NB).reshape(n_sets, NB) for ch in chunks])
        out[:, :, 0] = 0
        return out

    def _plan_genuine(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Bins and reported group (-1: none) of the genuine pairs, scored subject by subject (planning only; a
        subject with more than ``PLAN_SUBJECT`` images is represented by a seeded sample of them)."""
        rng = np.random.default_rng(seed + 1)
        by = np.argsort(self.subj, kind="stable")
        s = self.subj[by]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if s.size else np.zeros(0, np.int64)
        sizes = np.diff(np.r_[starts, s.size])
        lut = self._set_lut(genuine=True)
        bins, sets = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
        for m in np.unique(sizes[sizes >= 2]):
            pos = by[starts[sizes == m][:, None] + np.arange(m)]  # (subjects, m)
            if m > PLAN_SUBJECT:
                pos = np.sort(np.stack([rng.choice(row, PLAN_SUBJECT, replace=False) for row in pos]), axis=1)
            mm = pos.shape[1]
            iu, ju = np.triu_indices(mm, 1)
            per = max(1, (1 << 22) // (mm * mm))
            for a in range(0, pos.shape[0], per):
                x = self.emb[pos[a:a + per]]
                g = np.matmul(x, x.transpose(0, 2, 1))[:, iu, ju]
                bins.append(bin_index(g).ravel())
                sets.append((lut[self.cls[pos[a:a + per]][:, iu], self.cls[pos[a:a + per]][:, ju]] - 1).ravel())
        return np.concatenate(bins), np.concatenate(sets)

    def collect(self, ps: PairScores, bins: set[int], acc_from: int | None) -> None:
        """Another pass keeping the scores of ``bins`` (every key) and the pairs from ``acc_from`` up."""
        gp = self.grouping
        ranges = _merge_ranges([(b, b) for b in bins if 1 <= b < NB])
        keep = _Keep(gp, 0, np.zeros(len(gp.labels), np.int64), 0, acc_from, [list(ranges)] * gp.n_keys,
                     np.zeros(gp.n_keys, bool), 1 << 62)
        states = self.stream(keep, False, "scoring pairs (exact pass)")
        wanted = np.zeros(NB, dtype=bool)
        for lo, hi in ranges:
            wanted[lo:hi + 1] = True
        for k in range(gp.n_keys):
            v = _cat([x for st in states for x in st.vals.get(k, [])], np.float32)
            b = bin_index(v)
            v = v[~ps.exact[k][b]]  # bins already exact are not added twice
            vals = np.concatenate([ps.kept_values[k], v])
            ps.kept_values[k], ps.kept_bins[k] = _by_bin(vals)
            ps.exact[k] |= wanted
        _check_counts(ps)
        if acc_from is not None:
            p = _cat([x for st in states for x in st.acc_p], np.int64)
            q = _cat([x for st in states for x in st.acc_q], np.int64)
            v = _cat([x for st in states for x in st.acc_v], np.float32)
            keep_acc = v >= bin_floor(acc_from)[0]
            ps.acc_i, ps.acc_j = self.order[p[keep_acc]], self.order[q[keep_acc]]
            ps.acc_score = v[keep_acc]
            ps.accepted_from_bin = int(acc_from)


@dataclass
class _State:
    """Per-thread buffers and what the thread kept."""

    out: np.ndarray
    f: np.ndarray
    i: np.ndarray
    hist: np.ndarray | None
    max: np.ndarray
    vals: dict = field(default_factory=lambda: defaultdict(list))
    n_vals: int = 0
    prune_at: int = 1 << 23
    acc_p: list = field(default_factory=list)
    acc_q: list = field(default_factory=list)
    acc_v: list = field(default_factory=list)
    acc_k: list = field(default_factory=list)
    cand: np.ndarray = field(default_factory=lambda: np.empty(CANDIDATES, np.int64))  # tile kernel candidates

    def prune(self, rule: _Rule) -> None:
        """Drop kept scores and pairs that the risen cuts no longer ask for."""
        n = 0
        for k, parts in self.vals.items():
            v = np.concatenate(parts)
            v = v[rule.select(k, v)]
            self.vals[k] = [v]
            n += v.size
        if self.acc_v:
            v = np.concatenate(self.acc_v)
            a = v >= rule.v_acc
            self.acc_p, self.acc_q = [np.concatenate(self.acc_p)[a]], [np.concatenate(self.acc_q)[a]]
            self.acc_v = [v[a]]
        self.n_vals = n
        self.prune_at = max(1 << 23, 4 * n)


def _candidates(s: np.ndarray, rects: list, rule: _Rule, found):
    """(key, flat indices in the tile, scores) of each rectangle's scores >= the rule's first filter (a superset is
    fine: the caller applies the rule). ``found``: (indices, bounds per rectangle) from the tile kernel, else None.
    ``s`` is C-contiguous (:meth:`_Engine.tile_scores`)."""
    w = s.shape[1]
    flat = s.reshape(-1)
    for r, (ra, rb, ca, cb, key) in enumerate(rects):
        pre = rule.pre[key]
        if pre == np.inf:
            continue
        if found is not None:
            idx = found[0][found[1][r]:found[1][r + 1]]
            v = flat[idx]
        elif ca == 0 and cb == w:  # whole rows: one flat run of the tile
            part = flat[ra * w:rb * w]
            idx = np.flatnonzero(part >= pre)
            v = part[idx]
            idx += ra * w
        else:
            sub = s[ra:rb, ca:cb]
            idx = np.flatnonzero(sub >= pre)
            rr, cc = np.divmod(idx, cb - ca)
            v = sub[rr, cc]
            idx = (rr + ra) * w + cc + ca
        if v.size:
            yield key, idx, v


def _compiled_tile(s: np.ndarray, rects: list, rule: _Rule, cand: np.ndarray, diagonal: bool):
    """(keys, counts: (keys, NB), found) of one tile from the compiled kernel; ``found``: the kept candidates and
    their bounds per rectangle, for :func:`_candidates` (None when more than ``cand`` holds: numpy selects).
    ``rule`` is the one before this tile's counts: cuts only rise, so what it keeps includes what a later one keeps."""
    slot: dict[int, int] = {}
    arr = np.array([(ra, rb, ca, cb, slot.setdefault(key, len(slot))) for ra, rb, ca, cb, key in rects],
                   dtype=np.int64)
    keys = np.fromiter(slot, dtype=np.int64, count=len(slot))
    counts = np.zeros((keys.size, NB), np.int32)  # at most block**2 per bin; smaller in cache
    ends = np.empty(len(rects), np.int64)
    keep = np.stack([rule.keep_table(int(k)) for k in keys])
    n = tile_kernel.count_and_keep(s, arr, counts, keep, cand, ends, diagonal)
    if n >= cand.size:
        return keys, counts, None
    return keys, counts, (cand, np.r_[0, ends])


@functools.cache
def _bin_floors() -> np.ndarray:
    """(NB,) float32: the lowest score of each bin (-inf for bin 0)."""
    return bin_floor(np.arange(NB)).astype(np.float32)


def _tile_counts(s: np.ndarray, rects: list, fbuf: np.ndarray, ibuf: np.ndarray,
                 bincount: Callable[[np.ndarray, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(keys, counts: (keys, NB)) of one tile's pairs with numpy, each rectangle of ``rects`` counted under its key
    (the bins of :func:`bin_index`; ``MASKED`` entries fall in bin 0)."""
    np.multiply(s, A32, out=fbuf)
    np.add(fbuf, C32, out=fbuf)
    np.clip(fbuf, 0, NB - 1, out=fbuf)
    ibuf[...] = fbuf
    slot: dict[int, int] = {}
    for ra, rb, ca, cb, key in rects:
        sl = slot.setdefault(key, len(slot))
        if sl:
            ibuf[ra:rb, ca:cb] += sl * NB
    keys = np.fromiter(slot, dtype=np.int64, count=len(slot))
    return keys, bincount(ibuf, keys.size * NB).reshape(keys.size, NB)


def _bin_dtype() -> type:
    """The integer type of the per-tile bin buffers that :func:`_bincount` counts fastest: numpy's bincount converts
    anything else to int64 first (a copy of the tile: counting int32 bins took 2.5x as long), torch's is fastest
    on int32."""
    return np.int32 if "torch" in sys.modules else np.int64


def _bincount() -> Callable[[np.ndarray, int], np.ndarray]:
    """Bin counts of an int32 array: torch's when torch is loaded already (about 3x faster than numpy's here), else
    numpy's (importing torch would cost more than it saves). The counts are the same."""
    torch = sys.modules.get("torch")
    if torch is None:
        return lambda a, n: np.bincount(a.reshape(-1), minlength=n)
    return lambda a, n: torch.bincount(torch.from_numpy(a).reshape(-1), minlength=n).numpy()


@contextlib.contextmanager
def _torch_single_thread():
    """Torch (when loaded) limited to one thread: the tiles already share the cores."""
    torch = sys.modules.get("torch")
    n = torch.get_num_threads() if torch is not None else 0
    if n:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(n)


def _cat(xs: list, dtype) -> np.ndarray:
    return np.concatenate(xs).astype(dtype, copy=False) if xs else np.zeros(0, dtype)


def _last(cond: np.ndarray) -> int:
    """The highest bin b >= 1 where ``cond[b]`` holds (1 when none)."""
    idx = np.flatnonzero(cond[1:])
    return int(idx[-1]) + 1 if idx.size else 1


def _survival_band(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """From (J, NB) pilot counts: the estimated share of scores in bins >= b, its standard deviation (spread of the
    J chunks, ratio estimator; at least the binomial one) and the number of pilot pairs."""
    suf = np.cumsum(c[:, ::-1], axis=1)[:, ::-1].astype(np.float64)
    m = suf[:, 1]
    total = float(m.sum())
    if total <= 0:
        return np.zeros(NB), np.zeros(NB), 0
    surv = suf.sum(axis=0) / total
    j = c.shape[0]
    var = (j / max(j - 1, 1)) * ((suf - surv[None, :] * m[:, None]) ** 2).sum(axis=0) / total ** 2
    floor = np.maximum(surv * (1 - surv), 1.0 / total) / total
    return surv, np.sqrt(np.maximum(var, floor)), int(total)


def _by_bin(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores in ascending order, hence ordered by bin (``bin_index`` is monotone), with their bins. Sorting the
    float32 values themselves is 3-5x faster than an argsort of their 16-bit bins and a gather."""
    v = np.sort(np.asarray(v, dtype=np.float32))
    return v, bin_index(v).astype(np.uint16)


def _check_counts(ps: PairScores) -> None:
    for k in range(ps.hist.shape[0]):
        cnt = np.bincount(ps.kept_bins[k], minlength=NB)
        bad = ps.exact[k] & (cnt != ps.hist[k])
        if bad.any():
            b = int(np.flatnonzero(bad)[0])
            raise RuntimeError(f"key {k}, bin {b}: {cnt[b]} kept scores but {ps.hist[k, b]} counted "
                               "(non-deterministic matrix products?)")


def normalise(emb: np.ndarray) -> np.ndarray:
    """Float32 unit rows; rows that are zero or not finite raise ValueError."""
    e = np.asarray(emb, dtype=np.float32)
    if e.ndim != 2:
        raise ValueError("embeddings must be a 2-D array (N, D)")
    if not np.all(np.isfinite(e)):
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("some embeddings are all zeros")
    return (e / norms).astype(np.float32, copy=False)


def score_all_pairs(emb: np.ndarray, subjects, grouping: PairGrouping, block: int = DEFAULT_BLOCK,
                    keep_all_pairs: int = DEFAULT_KEEP_ALL, needs: ExactNeeds | None = None,
                    seed: int = 0) -> PairScores:
    """Score all pairs i < j in one pass (see module doc). ``subjects``: one label per image (any hashable);
    ``needs``: what must be exact (streamed engine only); ``seed``: the pilot's row sample (speed only, never the
    results)."""
    needs = needs or ExactNeeds()
    n_pairs = len(emb) * (len(emb) - 1) // 2
    if n_pairs > keep_all_pairs:
        tile_kernel.warm_up()  # while the engine and the plan are set up (started earlier, the load's Python work
        # slowed reading the data by more than it saved)
    emb = normalise(emb)
    _, codes = np.unique(np.asarray([str(s) for s in subjects]), return_inverse=True)
    codes = codes.astype(np.int64)
    eng = _Engine(emb, codes, grouping, block)
    n = eng.n
    streamed = n * (n - 1) // 2 > keep_all_pairs
    if not streamed:
        states, score, p, q, key = eng.keep_all()
        ps = _pair_scores(eng, states, codes, False)
        ps.imp_score, ps.imp_i, ps.imp_j, ps.imp_key = score, eng.order[p], eng.order[q], key
        return ps
    k = grouping.n_keys
    n_key = eng.n_key
    n_all = int(n_key.sum())
    full = n_key <= keep_all_pairs // max(k, 1)
    m_all = _reservoir(needs.fmrs, n_all)
    m_group = np.zeros(len(grouping.labels), dtype=np.int64)
    for g in range(m_group.size):
        n_g = int(n_key[grouping.keys_of_group(g)].sum())
        m_group[g] = _reservoir(needs.group_fmrs, n_g)
    m_acc = max([max_allowed_false_matches(t, n_all) + 1 for t in needs.accept_fmrs] + [0])
    if m_acc > needs.max_accepted:
        m_acc = 0
    fixed = [tau_bin(t) for t in needs.thresholds if t == t and abs(t) != math.inf]
    acc_fixed = min(fixed) if fixed else None
    windows, start = eng.plan(needs, n_key, m_all, m_group, m_acc, full, seed)
    keep = _Keep(grouping, m_all, m_group, m_acc, acc_fixed, windows, full, needs.max_accepted, start)
    states = eng.stream(keep, True, "scoring pairs")
    ps = _pair_scores(eng, states, codes, True)
    ps.counting = "compiled tile kernel (numba)" if tile_kernel.ready() else "numpy"
    hist = np.sum([st.hist for st in states], axis=0)
    hist[:, 0] = 0  # masked entries (not pairs, genuine pairs)
    if not np.array_equal(hist.sum(axis=1), n_key):
        raise RuntimeError("internal error: the histogram does not hold every impostor pair once")
    rule = keep.final(hist)
    ps.hist, ps.exact = hist, keep.exact_bins(rule)
    for key in range(k):
        v = _cat([x for st in states for x in st.vals.get(key, [])], np.float32)
        vals, bins = _by_bin(v[rule.select(key, v)])
        ps.kept_values.append(vals)
        ps.kept_bins.append(bins)
    _check_counts(ps)
    if rule.v_acc < np.inf and not keep.overflow:
        p = _cat([x for st in states for x in st.acc_p], np.int64)
        q = _cat([x for st in states for x in st.acc_q], np.int64)
        v = _cat([x for st in states for x in st.acc_v], np.float32)
        a = v >= rule.v_acc
        ps.acc_i, ps.acc_j, ps.acc_score = eng.order[p[a]], eng.order[q[a]], v[a]
        ps.accepted_from_bin = rule.acc_cut
    ps._engine = eng
    return ps


def _reservoir(fmrs, n: int) -> int:
    """Scores the reservoir keeps for these target FMRs on n impostors: k + 1 of the largest FMR <= RESERVOIR_FMR
    (0 when none); beyond ``RESERVOIR_MAX`` the windows take over."""
    ms = [max_allowed_false_matches(t, n) + 1 for t in fmrs if t <= RESERVOIR_FMR]
    return max([m for m in ms if m <= RESERVOIR_MAX] + [0])


def _pair_scores(eng: _Engine, states: list, codes: np.ndarray, streamed: bool) -> PairScores:
    """Genuine pairs and highest impostor per image, in original indices."""
    max_pos = np.full(eng.n, -np.inf, dtype=np.float32)
    for st in states:
        np.maximum(max_pos, st.max, out=max_pos)
    max_pos[max_pos <= MASKED] = -np.inf  # images with no impostor
    max_imp = np.empty_like(max_pos)
    max_imp[eng.order] = max_pos
    i, j = eng.order[eng.gen_p], eng.order[eng.gen_q]
    i, j = np.minimum(i, j), np.maximum(i, j)
    o = np.lexsort((j, i))
    return PairScores(n_images=eng.n, grouping=eng.grouping, subjects=codes, gen_i=i[o], gen_j=j[o],
                      gen_score=eng.gen_score[o], max_impostor=max_imp, streamed=streamed)
