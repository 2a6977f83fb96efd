"""A compiled pass over one tile of scores for the streamed all-pairs engine (:mod:`agebias.evaluate.pairs`):
bin counts per key and the scores the engine's rule keeps, in one read of the tile. Every threshold of the rule is
a bin floor, so whether a score is kept depends on its bin only: the kernel looks it up in a table per key. Needs
numba (``pip install 'agebias[fast]'``); without it, or with ``AGEBIAS_NO_JIT=1``, the engine makes the same counts
with numpy (several passes over each tile; the whole pair pass at N = 30,000 takes about 1.5x as long).

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
    def count_and_keep(s, rects, a, c, nbins, counts, keep, cand, ends, upper):  # pragma: no cover - compiled
        """For rectangle r = (row0, row1, col0, col1, slot) of ``rects``: counts[slot, bin(s)] += 1 for each score,
        and the flat index of each score whose bin ``keep[slot]`` marks appended to ``cand`` (ends[r]: their end).
        With ``upper`` only entries above the diagonal (column > row) are read. Returns the number kept; a number
        >= len(cand) means the buffer filled up and only the counts are complete. Indices are cast to unsigned
        so that numba leaves out its negative-index wraparound (about 2x faster)."""
        w = s.shape[1]
        last = cand.shape[0] - 1
        n = 0
        for r in range(rects.shape[0]):
            ra, rb, ca, cb, sl = rects[r, 0], rects[r, 1], rects[r, 2], rects[r, 3], rects[r, 4]
            hist = counts[sl]
            table = keep[sl]
            for i in range(ra, rb):
                j0 = max(ca, i + 1) if upper else ca
                if j0 >= cb:
                    continue
                seg = s[i, j0:cb]
                base = i * w + j0
                for j in range(seg.shape[0]):
                    b = min(max(np.int64(seg[j] * a + c), 0), nbins - 1)  # |s * a + c| << 2**63: truncate, clip
                    hist[np.uint64(b)] += 1
                    cand[np.uint64(min(n, last))] = base + j  # written always, kept by the table: no branch
                    n += np.int64(table[np.uint64(b)])
            ends[r] = n
        return n

    return count_and_keep


_lock = threading.Lock()
_warm_lock = threading.Lock()
_state: dict[str, bool] = {}


def warm_up() -> None:
    """Load (or compile) the kernel and check it in a background thread, so that :func:`ready` finds it done (once
    per process: later calls do nothing)."""
    with _warm_lock:  # not _lock, which ready() holds while it loads: a second call returns at once
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
    keep = np.zeros((1, NB), np.uint8)
    keep[0, 1::7] = 1
    n = probe.shape[1]
    cand, ends = np.empty(n, np.int64), np.empty(1, np.int64)
    kept = kernel(probe, np.array([[0, 1, 0, n, 0]], np.int64), A32, C32, NB, counts, keep, cand, ends, False)
    # both functions are monotone and the probe is sorted: equal counts mean equal bins, value by value
    want = bins.bin_index(probe[0])
    same = np.array_equal(counts[0], np.bincount(want, minlength=NB))
    same = same and np.array_equal(cand[:kept], np.flatnonzero(keep[0][want])) and ends.tolist() == [kept]
    if not same:
        log.warning("the compiled tile kernel bins differently from numpy here; counting with numpy")
    return same


def count_and_keep(s: np.ndarray, rects: np.ndarray, counts: np.ndarray, keep: np.ndarray, cand: np.ndarray,
                   ends: np.ndarray, upper: bool) -> int:
    """Run the kernel on tile ``s`` (C-contiguous float32); see its docstring (``keep``: (slots, NB) uint8, 1 for
    the bins whose scores are kept). Call :func:`ready` first."""
    if cand.size == 0:
        raise ValueError("the candidate buffer must hold at least one index")
    return int(_compiled()(s, rects, A32, C32, NB, counts, keep, cand, ends, upper))
