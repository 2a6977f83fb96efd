"""A compiled pass over one tile of scores for the streamed all-pairs engine (:mod:`agebias.evaluate.pairs`):
bin counts per key and the scores at or above a first filter, in one read of the tile, then of those the scores
the engine's rule keeps. Needs numba (``pip install 'agebias[fast]'``); without it, or with ``AGEBIAS_NO_JIT=1``,
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
    """The numba kernels (count_tile, keep_candidates), or None (numba missing or disabled)."""
    if os.environ.get("AGEBIAS_NO_JIT", "") not in ("", "0"):
        return None
    try:
        from numba import njit
    except ImportError:
        return None

    @njit(nogil=True, cache=True)
    def count_tile(s, rects, a, c, nbins, counts, pre, cand, ends, upper):  # pragma: no cover - compiled
        """For rectangle r = (row0, row1, col0, col1, slot) of ``rects``: counts[slot, bin(s)] += 1 for each score,
        flat indices of scores >= pre[r] appended to ``cand`` (ends[r]: their end); with ``upper`` only entries
        above the diagonal (column > row) are read. Returns the number of candidates (as many as ``cand`` holds or more:
        only the counts are complete)."""
        w = s.shape[1]
        last = cand.shape[0] - 1
        n = 0
        for r in range(rects.shape[0]):
            ra, rb, ca, cb, sl = rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3], rects[r, 4]
            p = pre[r]
            hist = counts[sl]
            for i in range(ra, rb):
                row = s[i]
                base = i * w
                for j in range(max(ca, i + 1) if upper else ca, cb):
                    v = row[j]
                    b = np.int64(v * a + c)  # |v * a + c| is far below 2**63: truncating, then clipping, is exact
                    if b < 0:
                        b = 0
                    elif b >= nbins:
                        b = nbins - 1
                    hist[b] += 1
                    cand[min(n, last)] = base + j  # written always, kept when v >= p: no branch to mispredict
                    n += np.int64(v >= p)
            ends[r] = n
        return n

    @njit(nogil=True, cache=True)
    def keep_candidates(flat, cand, ends, v_cut, v_acc, win_lo, win_hi):  # pragma: no cover - compiled
        """Of the candidates of each rectangle r (``cand`` up to ``ends``), keep those a rule keeps: score >=
        v_cut[r], >= v_acc, or in [win_lo[r, w], win_hi[r, w]) for a window w; ``cand``/``ends`` compacted in
        place. Returns how many are kept."""
        out = 0
        start = 0
        for r in range(ends.shape[0]):
            end = ends[r]
            for k in range(start, end):
                i = cand[k]
                v = flat[i]
                kept = v >= v_cut[r] or v >= v_acc
                for w in range(win_lo.shape[1]):
                    kept = kept or (v >= win_lo[r, w] and v < win_hi[r, w])
                cand[out] = i
                out += np.int64(kept)
            start = end
            ends[r] = out
        return out

    return count_tile, keep_candidates


_lock = threading.Lock()
_state: dict[str, bool] = {}


def warm_up() -> None:
    """Load (or compile) the kernel and check it in a background thread, so that :func:`ready` finds it done."""
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
    kernels = _compiled()
    if kernels is None:
        return False
    kernel, keep = kernels
    above = bin_floor(np.arange(1, NB)).astype(np.float32)          # lowest float32 of each bin b >= 1
    below = np.nextafter(above, np.float32(-np.inf))                  # highest float32 of bin b - 1
    probe = np.sort(np.concatenate([above, below, np.float32([-2.0, 2.0])]))[None, :]
    counts = np.zeros((1, NB), np.int32)
    n = probe.shape[1]
    kernel(probe, np.array([[0, 1, 0, n, 0]], np.int64), A32, C32, NB, counts, np.float32([np.inf]),
           np.empty(1, np.int64), np.empty(1, np.int64), False)
    # both functions are monotone and the probe is sorted: equal counts mean equal bins, value by value
    same = np.array_equal(counts[0], np.bincount(bins.bin_index(probe[0]), minlength=NB))
    cand, ends = np.arange(4, dtype=np.int64), np.array([4], np.int64)  # loads (or compiles) the second kernel
    keep(np.float32([0.1, 0.5, 0.2, 0.9]), cand, ends, np.float32([0.8]), np.float32(np.inf),
         np.float32([[0.15]]), np.float32([[0.3]]))
    same = same and cand[:ends[0]].tolist() == [2, 3]
    if not same:
        log.warning("the compiled tile kernel bins differently from numpy here; counting with numpy")
    return same


def count_tile(s: np.ndarray, rects: np.ndarray, counts: np.ndarray, pre: np.ndarray, cand: np.ndarray,
               ends: np.ndarray, upper: bool) -> int:
    """Run the counting kernel on tile ``s`` (C-contiguous float32); see its docstring. Call :func:`ready` first."""
    return int(_compiled()[0](s, rects, A32, C32, NB, counts, pre, cand, ends, upper))


def keep_candidates(flat: np.ndarray, cand: np.ndarray, ends: np.ndarray, v_cut: np.ndarray, v_acc: float,
                    windows: list[list[tuple[float, float]]]) -> int:
    """Compact the candidates of each rectangle to those its rule keeps (``v_cut``, ``v_acc``, ``windows``: per
    rectangle, the rule's score cut and [lo, hi) windows); see the kernel's docstring."""
    width = max([len(w) for w in windows] + [1])
    lo = np.full((len(windows), width), np.inf, np.float32)
    hi = np.full((len(windows), width), -np.inf, np.float32)
    for r, w in enumerate(windows):
        for k, (a, b) in enumerate(w):
            lo[r, k], hi[r, k] = a, b
    return int(_compiled()[1](flat, cand, ends, np.asarray(v_cut, np.float32), np.float32(v_acc), lo, hi))
