"""All pairs i < j of a test set, scored by cosine in blocks, aggregated so that memory stays small.

**Scores.** Embeddings are L2-normalised (float32) and sorted by subject; the score matrix is computed one
``block x block`` tile at a time over the upper triangle only (memory O(N*D + block^2)); a score is the float32
dot product of the two unit vectors. Genuine pairs (same subject) lie in small rectangles near the diagonal
(subjects are contiguous after sorting); they are kept exactly with their indices.

**Impostors, small sets** (pairs <= ``keep_all_pairs``): every impostor score is kept (float32 + key + indices);
every metric is computed from the exact arrays.

**Impostors, large sets** (e.g. N = 30,000: 450 M pairs, 1.8 GB as float32): two streamed passes.

1. Pass 1 adds each tile to a histogram of 2^16 bins over [-1.0009765625, 1.0009765625] per pair *key* (the
   pair's age-group cell, see :mod:`agebias.evaluate.grouping`). The bin of a score is
   ``int(clip(float32(s * A + C)))``, a monotone function of the float32 score, so every count of the form
   "scores in bins >= b" is exact.
2. Metrics are then evaluated in *planning mode*: a question that needs the order of scores inside one bin
   (the (k+1)-th largest impostor for a target FMR, the count of scores >= tau inside tau's bin, the EER crossing
   bin and its two occupied neighbours, per group and overall) records that bin instead of answering.
3. Pass 2 recomputes the tiles and keeps exactly the impostor scores that fall in the recorded bins (with their
   key), plus the (i, j) indices of every impostor at or above the operating threshold's bin (needed by the
   subject bootstrap and the instance-level protocol). The metrics are evaluated again, now exactly; should a
   new bin be needed (rare), another pass runs.

So thresholds, FMR/FNMR counts, EER and the FNMR at each target FMR are exact (identical to the all-in-memory
computation on the same float32 scores). Two quantities come from the histogram in streamed mode and say so in
the results: the impostor mean and variance for d' (bin centres with Sheppard's correction; error well below
1e-4 for unit-vector cosines) and AUC (scores sharing a bin with a genuine score count as ties; the
largest possible error is reported as ``auc_error_bound``). Memory: the histogram (K x 2^16 int64, K keys) plus
the kept bins; the dense score matrix is never formed.

**Threads.** Tiles are processed on a thread pool (``AGEBIAS_EVAL_THREADS``, default min(cores, 8)); BLAS is then
limited to one thread per product so that the cores share tiles, and the binning work (numpy releases the GIL) is
parallel too. Every tile is computed with the same shapes in both passes, so its scores are bit-identical; the
engine checks that each refined bin holds exactly as many scores as the first pass counted.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from agebias.evaluate.grouping import PairGrouping
from agebias.evaluate.metrics import ExactDist, _thin_curve
from agebias.progress import bar

NB = 1 << 16
LO = -1.0 - 2.0 ** -10
HI = 1.0 + 2.0 ** -10
A32 = np.float32(NB / (HI - LO))
C32 = np.float32(-LO * NB / (HI - LO))
DEFAULT_BLOCK = 2048
DEFAULT_KEEP_ALL = 2_000_000


def bin_index(scores: np.ndarray) -> np.ndarray:
    """Histogram bin of float32 scores (monotone non-decreasing in the score)."""
    f = np.asarray(scores, dtype=np.float32) * A32
    f += C32
    np.clip(f, 0, NB - 1, out=f)
    return f.astype(np.int32)


def _bin_index_inplace(s: np.ndarray, fbuf: np.ndarray, ibuf: np.ndarray) -> np.ndarray:
    np.multiply(s, A32, out=fbuf)
    np.add(fbuf, C32, out=fbuf)
    np.clip(fbuf, 0, NB - 1, out=fbuf)
    ibuf[...] = fbuf
    return ibuf


def _bin_low_value(b: int) -> float:
    """The smallest float32 whose bin is b (a stand-in value used while planning)."""
    x = np.float32((b - float(C32)) / float(A32))
    for _ in range(64):
        if bin_index(np.array([x]))[0] >= b:
            y = np.nextafter(x, np.float32(-np.inf))
            if bin_index(np.array([y]))[0] < b:
                return float(x)
            x = y
        else:
            x = np.nextafter(x, np.float32(np.inf))
    return float(x)


def _ceil32(tau: float) -> np.float32:
    t = np.float32(tau)
    if float(t) < tau:
        t = np.nextafter(t, np.float32(np.inf))
    return t


class BinnedDist:
    """An impostor score multiset known by its histogram plus the exact values of some bins (see module doc)."""

    def __init__(self, hist: np.ndarray, refined: dict[int, np.ndarray], missing: set[int]):
        self.hist = np.asarray(hist, dtype=np.int64)
        self.suffix = np.zeros(NB + 1, dtype=np.int64)
        self.suffix[:NB] = np.cumsum(self.hist[::-1])[::-1]
        self.n = int(self.suffix[0])
        self.refined = refined
        self.missing = missing
        self.auc_error_bound = math.nan

    def _in_bin_ge(self, b: int, tau: float) -> int | None:
        vals = self.refined.get(b)
        if vals is None:
            self.missing.add(int(b))
            return None
        return int(vals.size - np.searchsorted(vals, np.float64(tau), side="left"))

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
        inside = self._in_bin_ge(b, tau)
        return int(self.suffix[b + 1] + (inside or 0))

    def kth_largest(self, k: int) -> float:
        b = int(np.searchsorted(-self.suffix, -k, side="right") - 1)
        r = k - int(self.suffix[b + 1])
        vals = self.refined.get(b)
        if vals is None:
            self.missing.add(b)
            return _bin_low_value(b)
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
        vals = []
        ok = True
        for b in window:
            if self.hist[b] > 0:
                v = self.refined.get(b)
                if v is None:
                    self.missing.add(b)
                    ok = False
                else:
                    vals.append(v)
        if not ok:
            u = np.array([_bin_low_value(bstar)])
            return u, np.array([self.suffix[bstar]]), math.nan, math.nan, prev is None, nxt is None
        imp_w = np.sort(np.concatenate(vals)) if vals else np.zeros(0)
        in_w = np.isin(gb, window)
        u = np.unique(np.concatenate([gen.values[in_w], imp_w]))
        above = int(self.suffix[window[-1] + 1])
        imp_ge = above + imp_w.size - np.searchsorted(imp_w, u, side="left")
        return u, imp_ge, math.nan, math.nan, prev is None, nxt is None

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
    """Result of scoring all pairs: genuine pairs exactly, impostors exactly (small) or binned (large)."""

    n_images: int
    grouping: PairGrouping
    subjects: np.ndarray        # (N,) int subject code per image (original order)
    gen_i: np.ndarray           # genuine pairs, original image indices, i < j in sorted order
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
    refined_scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    refined_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    refined_bins: set = field(default_factory=set)
    accepted_from_bin: int | None = None    # pairs with bin >= this are in acc_*
    acc_i: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    acc_j: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    acc_score: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    missing: set = field(default_factory=set)
    passes: int = 1
    _scorer: "_Scorer | None" = None

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
        sel = np.isin(self.refined_keys, ks)
        vals, bins = self.refined_scores[sel].astype(np.float64), bin_index(self.refined_scores[sel])
        refined = {}
        if vals.size:
            order = np.lexsort((vals, bins))
            vals, bins = vals[order], bins[order]
            cuts = np.flatnonzero(np.diff(bins)) + 1
            for chunk_v, chunk_b in zip(np.split(vals, cuts), np.split(bins, cuts)):
                refined[int(chunk_b[0])] = chunk_v
        for b in self.refined_bins:  # collected for every key: a bin with no values of these keys is empty
            refined.setdefault(b, np.zeros(0))
            if refined[b].size != hist[b]:
                raise RuntimeError(f"bin {b}: {refined[b].size} scores in the exact pass but {hist[b]} in the first "
                                   "(non-deterministic matrix products?)")
        return BinnedDist(hist, refined, self.missing)

    def accepted_impostors(self, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, key) of every impostor pair with score >= tau (original indices)."""
        if not self.streamed:
            m = self.imp_score >= np.float64(tau)
            return self.imp_i[m], self.imp_j[m], self.imp_key[m]
        if self.accepted_from_bin is None or int(bin_index(np.array([_ceil32(tau)]))[0]) < self.accepted_from_bin:
            raise RuntimeError("accepted pairs were not collected down to this threshold")
        m = self.acc_score >= np.float64(tau)
        i, j = self.acc_i[m], self.acc_j[m]
        return i, j, self.grouping.pair_keys(i, j)

    def refine(self, bins: set[int], accepted_from_bin: int | None) -> None:
        """Second streamed pass: keep exact impostor scores in ``bins`` and pairs from ``accepted_from_bin`` up."""
        if not self.streamed:
            return
        self._scorer.collect(self, set(bins) | set(self.refined_bins), accepted_from_bin)
        self.passes += 1


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


class _Scorer:
    def __init__(self, emb: np.ndarray, subjects: np.ndarray, grouping: PairGrouping, block: int):
        self.order = np.argsort(subjects, kind="stable")
        self.emb = np.ascontiguousarray(emb[self.order], dtype=np.float32)
        self.subj = subjects[self.order]
        self.cls = grouping.image_class[self.order].astype(np.int64)
        self.grouping = grouping
        self.block = block
        n = self.emb.shape[0]
        self.n = n
        starts = np.flatnonzero(np.r_[True, self.subj[1:] != self.subj[:-1]])
        self.seg_start = starts
        self.seg_end = np.r_[starts[1:], n]
        self.seg_of = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, n]))

    def tiles(self):
        n, b = self.n, self.block
        for r0 in range(0, n, b):
            for c0 in range(r0, n, b):
                yield r0, min(r0 + b, n), c0, min(c0 + b, n)

    def n_tiles(self) -> int:
        k = -(-self.n // self.block)
        return k * (k + 1) // 2

    def genuine_rects(self, r0, r1, c0, c1):
        s_lo = max(self.seg_of[r0], self.seg_of[c0])
        s_hi = min(self.seg_of[r1 - 1], self.seg_of[c1 - 1])
        for s in range(s_lo, s_hi + 1):
            a, e = self.seg_start[s], self.seg_end[s]
            rr0, rr1, cc0, cc1 = max(a, r0), min(e, r1), max(a, c0), min(e, c1)
            if rr0 < rr1 and cc0 < cc1:
                yield rr0 - r0, rr1 - r0, cc0 - c0, cc1 - c0

    def scores(self, r0, r1, c0, c1, out):
        o = out[: r1 - r0, : c1 - c0]
        np.matmul(self.emb[r0:r1], self.emb[c0:c1].T, out=o)
        return o

    def collect(self, ps: PairScores, bins: set[int], acc_from: int | None) -> None:
        lut = np.zeros(NB, dtype=np.uint8)
        if bins:
            lut[np.fromiter(bins, dtype=np.int64)] = 1
        if acc_from is not None:
            lut[acc_from:] |= 2
        b = self.block

        def make_state():
            return {"out": np.empty((b, b), np.float32), "f": np.empty((b, b), np.float32),
                    "i": np.empty((b, b), np.int32), "sv": [], "sk": [], "ai": [], "aj": [], "asc": []}

        def work(tile, st):
            r0, r1, c0, c1 = tile
            s = self.scores(r0, r1, c0, c1, st["out"])
            h, w = s.shape
            idx = _bin_index_inplace(s, st["f"][:h, :w], st["i"][:h, :w])
            code = lut[idx]
            flat = np.flatnonzero(code)
            if flat.size == 0:
                return
            rr, cc = flat // w + r0, flat % w + c0
            keep = (rr < cc) & (self.subj[rr] != self.subj[cc])
            flat, rr, cc = flat[keep], rr[keep], cc[keep]
            vals = s.ravel()[flat]
            cod = code.ravel()[flat]
            m1 = (cod & 1) > 0
            st["sv"].append(vals[m1])
            st["sk"].append(self.grouping.key_lut[self.cls[rr[m1]], self.cls[cc[m1]]])
            m2 = (cod & 2) > 0
            st["ai"].append(self.order[rr[m2]])
            st["aj"].append(self.order[cc[m2]])
            st["asc"].append(vals[m2])

        states = run_tiles(list(self.tiles()), work, make_state, "scoring pairs (exact pass)")
        sv, sk, ai, aj, asc = ([x for st in states for x in st[key]] for key in ("sv", "sk", "ai", "aj", "asc"))
        ps.refined_scores = np.concatenate(sv) if sv else np.zeros(0, np.float32)
        ps.refined_keys = np.concatenate(sk).astype(np.int32) if sk else np.zeros(0, np.int32)
        ps.refined_bins = set(int(x) for x in bins)
        if acc_from is not None:
            ps.accepted_from_bin = int(acc_from)
            ps.acc_i = np.concatenate(ai) if ai else np.zeros(0, np.int64)
            ps.acc_j = np.concatenate(aj) if aj else np.zeros(0, np.int64)
            ps.acc_score = np.concatenate(asc) if asc else np.zeros(0, np.float32)


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
    return (e / norms).astype(np.float32)


def score_all_pairs(emb: np.ndarray, subjects, grouping: PairGrouping, block: int = DEFAULT_BLOCK,
                    keep_all_pairs: int = DEFAULT_KEEP_ALL) -> PairScores:
    """Pass 1 over all pairs i < j (see module doc). ``subjects``: one label per image (any hashable)."""
    emb = normalise(emb)
    _, codes = np.unique(np.asarray([str(s) for s in subjects]), return_inverse=True)
    codes = codes.astype(np.int64)
    sc = _Scorer(emb, codes, grouping, block)
    n = sc.n
    n_pairs = n * (n - 1) // 2
    streamed = n_pairs > keep_all_pairs
    k = grouping.n_keys
    ign = k * NB  # combined index of the ignore slot
    b = block
    tri = np.tril(np.ones((b, b), dtype=bool))  # lower triangle incl. diagonal: not a pair i < j
    lut_flat = grouping.key_lut.ravel().astype(np.int32)
    c = grouping.n_classes
    if grouping.separable:
        row_part = (grouping.key_lut[:, 0].astype(np.int64) * NB).astype(np.int32)
        col_part = (grouping.key_lut[0, :].astype(np.int64) * NB).astype(np.int32)

    def make_state():
        return {"out": np.empty((b, b), np.float32), "f": np.empty((b, b), np.float32),
                "i": np.empty((b, b), np.int32), "hist": np.zeros((k + 1) * NB, dtype=np.int64) if streamed else None,
                "max": np.full(n, -np.inf, dtype=np.float32), "gi": [], "gj": [], "gs": [], "ki": [], "kj": [],
                "ks": [], "kk": []}

    def work(tile, st):
        r0, r1, c0, c1 = tile
        s = sc.scores(r0, r1, c0, c1, st["out"])
        h, w = s.shape
        diag = r0 == c0
        rects = list(sc.genuine_rects(r0, r1, c0, c1))
        for a, e, f, g in rects:  # genuine pairs: small rectangles (subjects are contiguous)
            rr, cc = np.mgrid[a:e, f:g]
            if diag:
                up = rr < cc
                rr, cc = rr[up], cc[up]
            rr, cc = rr.ravel(), cc.ravel()
            st["gi"].append(sc.order[rr + r0])
            st["gj"].append(sc.order[cc + c0])
            st["gs"].append(s[rr, cc].copy())
        if streamed:
            idx = _bin_index_inplace(s, st["f"][:h, :w], st["i"][:h, :w])
            if grouping.separable:
                idx += row_part[sc.cls[r0:r1]][:, None]
                idx += col_part[sc.cls[c0:c1]][None, :]
            else:
                key = lut_flat[sc.cls[r0:r1][:, None] * c + sc.cls[c0:c1][None, :]]
                key *= NB
                idx += key
            if diag:
                idx[tri[:h, :w]] = ign
            for a, e, f, g in rects:
                idx[a:e, f:g] = ign
            st["hist"] += np.bincount(idx.ravel(), minlength=(k + 1) * NB)
        else:
            ok = ~tri[:h, :w] if diag else np.ones((h, w), dtype=bool)
            for a, e, f, g in rects:
                ok[a:e, f:g] = False
            rr, cc = np.nonzero(ok)
            st["ks"].append(s[rr, cc].copy())
            st["ki"].append(sc.order[rr + r0])
            st["kj"].append(sc.order[cc + c0])
            st["kk"].append(grouping.key_lut[sc.cls[rr + r0], sc.cls[cc + c0]])
        if diag:
            s[tri[:h, :w]] = -np.inf
        for a, e, f, g in rects:
            s[a:e, f:g] = -np.inf
        oi, oj = sc.order[r0:r1], sc.order[c0:c1]
        m = st["max"]
        m[oi] = np.maximum(m[oi], s.max(axis=1))
        m[oj] = np.maximum(m[oj], s.max(axis=0))

    states = run_tiles(list(sc.tiles()), work, make_state, "scoring pairs")
    merged = {key: [x for st in states for x in st[key]] for key in ("gi", "gj", "gs", "ki", "kj", "ks", "kk")}
    gi, gj, gs, ki, kj, ks, kk = (merged[key] for key in ("gi", "gj", "gs", "ki", "kj", "ks", "kk"))
    max_imp = np.full(n, -np.inf, dtype=np.float32)
    for st in states:
        np.maximum(max_imp, st["max"], out=max_imp)
    hist = np.sum([st["hist"] for st in states], axis=0) if streamed else None
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)
    g_i, g_j, g_s = cat(gi, np.int64), cat(gj, np.int64), cat(gs, np.float32)
    o = np.lexsort((g_j, g_i))  # thread order is arbitrary: sort for reproducible outputs
    ps = PairScores(n_images=n, grouping=grouping, subjects=codes, gen_i=g_i[o], gen_j=g_j[o],
                    gen_score=g_s[o], max_impostor=max_imp, streamed=streamed)
    if streamed:
        ps.hist = hist[: k * NB].reshape(k, NB)
        ps._scorer = sc
    else:
        ps.imp_score, ps.imp_i, ps.imp_j = cat(ks, np.float32), cat(ki, np.int64), cat(kj, np.int64)
        ps.imp_key = cat(kk, np.int32)
    return ps
