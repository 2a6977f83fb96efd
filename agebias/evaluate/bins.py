"""Score bins of the streamed all-pairs engine (:mod:`agebias.evaluate.pairs`): 2^16 bins over
[-1.0009765625, 1.0009765625]; the bin of a float32 score is ``int(clip(float32(s * A32 + C32)))``, monotone in the
score, and :func:`bin_floor` gives the lowest float32 of each bin, so tests on bins can be made on scores."""

from __future__ import annotations

import functools

import numpy as np

NB = 1 << 16
LO = -1.0 - 2.0 ** -10
HI = 1.0 + 2.0 ** -10
A32 = np.float32(NB / (HI - LO))
C32 = np.float32(-LO * NB / (HI - LO))
MASKED = np.float32(LO)        # the score a tile gives its non-pairs and genuine pairs: bin 0, below every real score


def bin_index(scores: np.ndarray) -> np.ndarray:
    """Histogram bin of float32 scores (monotone non-decreasing in the score)."""
    f = np.asarray(scores, dtype=np.float32) * A32
    f += C32
    np.clip(f, 0, NB - 1, out=f)
    return f.astype(np.int32)


def _ordered(x: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys in the order of the values (-0.0 and 0.0 share a key)."""
    i = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(i >= 0, i, -(i & 0x7FFFFFFF))


def _from_ordered(k: np.ndarray) -> np.ndarray:
    bits = np.where(k >= 0, k, (-k) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


@functools.cache
def _floor_table() -> np.ndarray:
    """``bin_floor`` of every b in 0..NB, found once by bisection over the float32 values in their order."""
    inner = np.arange(1, NB, dtype=np.int64)
    lo = np.full(inner.shape, _ordered(np.float32(-2.0)), dtype=np.int64)   # bin 0 < b
    hi = np.full(inner.shape, _ordered(np.float32(2.0)), dtype=np.int64)    # bin NB - 1 >= b
    while (hi - lo > 1).any():
        mid = (lo + hi) // 2
        up = bin_index(_from_ordered(mid)) >= inner
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    out = np.empty(NB + 1, dtype=np.float32)
    out[0], out[NB] = -np.inf, np.inf
    out[1:NB] = _from_ordered(hi)
    return out


def bin_floor(bins) -> np.ndarray:
    """The smallest float32 whose bin is >= b, for each b (-inf for b <= 0, +inf for b >= NB). A score lies in a bin
    >= b iff it is >= bin_floor(b), so bin tests can be made on the scores themselves."""
    return _floor_table()[np.clip(np.atleast_1d(np.asarray(bins, dtype=np.int64)), 0, NB)]


def _ceil32(tau: float) -> np.float32:
    t = np.float32(tau)
    if float(t) < tau:
        t = np.nextafter(t, np.float32(np.inf))
    return t


def tau_bin(tau: float) -> int:
    """Bin of the smallest float32 >= tau: the lowest bin a score accepted at tau can be in (at least 1: bin 0 holds
    no real score, only the engine's masked entries)."""
    return max(1, int(bin_index(np.array([_ceil32(tau)]))[0]))
