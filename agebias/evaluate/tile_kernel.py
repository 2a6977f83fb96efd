"""A compiled pass over one tile of scores for the streamed all-pairs engine (:mod:`agebias.evaluate.pairs`):
bin counts per key and the scores the engine's rule keeps, in one read of the tile. Needs numba (``pip install 'agebias[fast]'``); without it, or with ``AGEBIAS_NO_JIT=1``,
the engine makes the same counts with numpy (several passes over each tile, about 3x as long per tile).

The bin of a score is computed as :func:`agebias.evaluate.bins.bin_index` computes it (float32 ``s * A + C``,
clipped to the bins, truncated). :func:`ready` checks that on both sides of every bin boundary before the kernel is
used: both bin functions are monotone, so agreeing there they agree on every float32.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

import numpy as np

from agebias.evaluate import bins
from agebias.evaluate.bins import A32, C32, NB, bin_floor

log = logging.getLogger(__name__)


@functools.cache
def _compiled():
    """The numba kernel (count_and_keep), or None (numba missing or disabled)."""
    if os.environ.get("AGEBIAS_NO_JIT", "") not in ("", "0"):
        return None
    try:
        from numba import njit
    except ImportError:
        return None

    @njit(nogil=True, cache=True)
    def count_and_keep(s, rects, a, c, nbins, counts, pre, cut, win_lo, win_hi, cand, ends, upper):  # pragma: no cover
        """For rectangle r = (row0, row1, col0, col1, slot) of ``rects``: counts[slot, bin(s)] += 1 for each score,
        and the flat index of each score the rule keeps appended to ``cand`` (ends[r]: their end). Kept: score >=
        cut[r], or in [win_lo[r, w], win_hi[r, w]) for a window w; ``pre[r]`` is the lowest of those bounds. With
        ``upper`` only entries above the diagonal (column > row) are read. Returns the number kept; a number >=
        len(cand) means the buffer filled up and only the counts are complete.

        Row by row: the columns of the scores >= pre go to ``cand`` without a branch, then, while the row is still
        in cache, are narrowed to the kept ones. Indices are cast to unsigned so that numba leaves out its
        negative-index wraparound (about 2x faster)."""
        w = s.shape[1]
        size = cand.shape[0]
        last = size - 1
        n_win = win_lo.shape[1]
        n = 0
        for r in range(rects.shape[0]):
            ra, rb, ca, cb, sl = rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3], rects[r, 4]
            p, keep_from = pre[r], cut[r]
            hist = counts[sl]
            lo, hi = win_lo[r], win_hi[r]
            for i in range(ra, rb):
                j0 = max(ca, i + 1) if upper else ca
                if j0 >= cb:
                    continue
                seg = s[i, j0:cb]
                start = n
                for j in range(seg.shape[0]):
                    v = seg[j]
                    b = min(max(np.int64(v * a + c), 0), nbins - 1)  # |v * a + c| << 2**63: truncate, then clip
                    hist[np.uint64(b)] += 1
                    cand[np.uint64(min(n, last))] = j  # written always, kept when v >= p: no branch to mispredict
                    n += np.int64(v >= p)
                if n >= size:  # full: only the counts go on
                    continue
                base = i * w + j0
                out = start
                for k in range(start, n):
                    j = cand[np.uint64(k)]
                    v = seg[np.uint64(j)]
                    kept = v >= keep_from
                    for q in range(n_win):
                        kept |= (v >= lo[np.uint64(q)]) & (v < hi[np.uint64(q)])
                    cand[np.uint64(out)] = base + j
                    out += np.int64(kept)
                n = out
            ends[r] = n
        return n

    return count_and_keep


_lock = threading.Lock()
_state: dict[str, bool] = {}


def warm_up() -> None:
    """Load (or compile) the kernel and check it in a background thread, so that :func:`ready` finds it done (once
    per process: later calls do nothing)."""
    with _lock:
        if _state.get("warming") or "ready" in _state:
            return
        _state["warming"] = True
    threading.Thread(target=ready, name="agebias-tile-kernel", daemon=True).start()


def ready() -> bool:
    """Whether the compiled kernel is available and bins exactly as ``bin_index`` does (checked once per process;
    a call while :func:`warm_up` works waits for it)."""
    with _lock:
        if "ready" not in _state:
            _state["ready"] = _check()
        return _state["ready"]


def _check() -> bool:
    try:
        return _agrees()
    except Exception as err:  # noqa: BLE001 - a kernel numba cannot build or cache here leaves the numpy path
        log.warning(f"the compiled tile kernel is not usable here ({type(err).__name__}: {err}); counting with numpy")
        return False


def _agrees() -> bool:
    kernel = _compiled()
    if kernel is None:
        return False
    above = bin_floor(np.arange(1, NB)).astype(np.float32)          # lowest float32 of each bin b >= 1
    below = np.nextafter(above, np.float32(-np.inf))                  # highest float32 of bin b - 1
    probe = np.sort(np.concatenate([above, below, np.float32([-2.0, 2.0])]))[None, :]
    counts = np.zeros((1, NB), np.int32)
    n = probe.shape[1]
    no_window = np.full((1, 1), np.inf, np.float32), np.full((1, 1), -np.inf, np.float32)
    kernel(probe, np.array([[0, 1, 0, n, 0]], np.int64), A32, C32, NB, counts, np.float32([np.inf]),
           np.float32([np.inf]), *no_window, np.empty(1, np.int64), np.empty(1, np.int64), False)
    # both functions are monotone and the probe is sorted: equal counts mean equal bins, value by value
    same = np.array_equal(counts[0], np.bincount(bins.bin_index(probe[0]), minlength=NB))
    row = np.float32([[0.1, 0.5, 0.2, 0.9, 0.15]])
    cand, ends = np.empty(8, np.int64), np.empty(1, np.int64)
    kept = count_and_keep(row, np.array([[0, 1, 0, 5, 0]], np.int64), np.zeros((1, NB), np.int32),
                          np.float32([0.15]), np.float32([0.8]), [[(0.15, 0.3)]], cand, ends, False)
    same = same and cand[:kept].tolist() == [2, 3, 4] and ends.tolist() == [3]
    if not same:
        log.warning("the compiled tile kernel bins differently from numpy here; counting with numpy")
    return same


def count_and_keep(s: np.ndarray, rects: np.ndarray, counts: np.ndarray, pre: np.ndarray, cut: np.ndarray,
                   windows: list[list[tuple[float, float]]], cand: np.ndarray, ends: np.ndarray, upper: bool) -> int:
    """Run the kernel on tile ``s`` (C-contiguous float32); see its docstring (``windows``: per rectangle, the
    rule's [lo, hi) score windows). Call :func:`ready` first."""
    width = max([len(w) for w in windows] + [1])
    lo = np.full((len(windows), width), np.inf, np.float32)
    hi = np.full((len(windows), width), -np.inf, np.float32)
    for r, w in enumerate(windows):
        for k, (a, b) in enumerate(w):
            lo[r, k], hi[r, k] = a, b
    return int(_compiled()(s, rects, A32, C32, NB, counts, np.asarray(pre, np.float32),
                           np.asarray(cut, np.float32), lo, hi, cand, ends, upper))
