"""Verification metrics with pinned conventions (ISO/IEC 19795-1 definitions of FMR and FNMR), as pure functions.

Conventions (the same everywhere in agebias):

- A pair is **accepted iff score >= tau**. FMR(tau) = #impostor scores >= tau / #impostors;
  FNMR(tau) = #genuine scores < tau / #genuine. An empty denominator gives NaN (counts are reported beside it).
- **Threshold at a target FMR**: one tau from the pooled impostor scores, the smallest tau whose FMR does not
  exceed the target. With k = the largest integer with k / n <= target, tau is the smallest float64 strictly above
  the (k+1)-th largest impostor score (ties included), so FMR(tau) <= target is realised exactly; the realised FMR
  is returned beside the target. k >= n (target >= 1) gives tau = the smallest impostor score (accept all).
- **EER**: candidate thresholds at the midpoints between consecutive distinct scores (genuine and impostor pooled)
  and beyond both ends (reported as the float64 just below the smallest / just above the largest score); the
  candidate minimising |FMR - FNMR| wins (the lowest such tau on ties) and EER = (FMR + FNMR) / 2 there.
- **AUC** = P(genuine > impostor) + 0.5 P(genuine == impostor) (the Mann-Whitney form; equals scikit-learn's
  ``roc_auc_score`` with genuine as the positive class).
- **d'** = |mean_g - mean_i| / sqrt((var_g + var_i) / 2) with population variances (ddof 0).
- Intervals for a rate k / n: :func:`clopper_pearson` (exact binomial), 95 % by default. It treats the n pairs as
  independent draws; the evaluator reports it as ``fmr_pairs_ci``/``fnmr_pairs_ci`` and uses the subject
  bootstrap (:mod:`agebias.evaluate.bootstrap`) for ``fmr_ci``/``fnmr_ci``, since pairs sharing a subject are
  correlated.

Score collections are :class:`ScoreDist` objects: :class:`ExactDist` wraps a sorted array; the streamed all-pairs
engine (:mod:`agebias.evaluate.pairs`) provides a histogram-backed distribution with the same interface whose
counts are exact (see that module). All functions below also accept plain arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

DEFAULT_TARGETS = (1e-2, 1e-3, 1e-4)


class ScoreDist(Protocol):
    """A multiset of scores answering the questions metrics need (exactly)."""

    n: int

    def count_ge(self, tau: float) -> int: ...
    def kth_largest(self, k: int) -> float: ...
    def moments(self) -> tuple[float, float]: ...  # mean, population variance
    def eer_candidates(self, gen: "ExactDist") -> tuple[np.ndarray, np.ndarray, float, float, bool, bool]: ...
    def curve_points(self, gen: "ExactDist", max_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def auc(self, gen: "ExactDist") -> float: ...


class ExactDist:
    """Scores held in memory as a sorted float64 array."""

    def __init__(self, scores: Sequence[float] | np.ndarray):
        arr = np.asarray(scores, dtype=np.float64).ravel()
        if arr.size and not np.all(np.isfinite(arr)):
            raise ValueError("scores must be finite")
        self.values = np.sort(arr)
        self.n = int(arr.size)

    def count_ge(self, tau: float) -> int:
        return int(self.n - np.searchsorted(self.values, np.float64(tau), side="left"))

    def count_lt(self, tau: float) -> int:
        return int(np.searchsorted(self.values, np.float64(tau), side="left"))

    def kth_largest(self, k: int) -> float:
        return float(self.values[self.n - k])

    def moments(self) -> tuple[float, float]:
        if self.n == 0:
            return math.nan, math.nan
        return float(self.values.mean()), float(self.values.var())

    def eer_candidates(self, gen: "ExactDist"):
        """Distinct pooled values u (ascending) with impostor counts >= u; the whole range is the window."""
        u = np.unique(np.concatenate([gen.values, self.values]))
        imp_ge = self.n - np.searchsorted(self.values, u, side="left")
        return u, imp_ge, math.nan, math.nan, True, True

    def curve_points(self, gen: "ExactDist", max_points: int = 600):
        u = np.unique(np.concatenate([gen.values, self.values]))[::-1]
        imp_ge = self.n - np.searchsorted(self.values, u, side="left")
        gen_ge = gen.n - np.searchsorted(gen.values, u, side="left")
        thr = np.concatenate([[np.inf], u])
        imp_ge = np.concatenate([[0], imp_ge])
        gen_ge = np.concatenate([[0], gen_ge])
        keep = _thin_curve(imp_ge / max(self.n, 1), max_points)
        return thr[keep], imp_ge[keep], gen_ge[keep]

    def auc(self, gen: "ExactDist") -> float:
        if self.n == 0 or gen.n == 0:
            return math.nan
        lt = np.searchsorted(self.values, gen.values, side="left")
        le = np.searchsorted(self.values, gen.values, side="right")
        return float((lt.sum() + 0.5 * (le - lt).sum()) / (gen.n * self.n))


def as_dist(scores) -> ScoreDist:
    return scores if hasattr(scores, "count_ge") else ExactDist(scores)


def as_exact(scores) -> ExactDist:
    return scores if isinstance(scores, ExactDist) else ExactDist(scores)


# ---------------------------------------------------------------- rates


def rate(k: int, n: int) -> float:
    return k / n if n > 0 else math.nan


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials; (nan, nan) when n == 0."""
    from scipy.special import betaincinv  # = scipy.stats.beta.ppf, without importing scipy.stats (slow)

    if n <= 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - a))
    return lo, hi


@dataclass(frozen=True)
class Rates:
    """Error rates at one threshold with their counts and Clopper-Pearson intervals (pairs assumed independent;
    reported as ``fmr_pairs_ci``/``fnmr_pairs_ci``)."""

    tau: float
    n_genuine: int
    n_impostor: int
    false_matches: int
    false_non_matches: int
    fmr: float
    fnmr: float
    fmr_ci: tuple[float, float]
    fnmr_ci: tuple[float, float]


def rates_at(genuine, impostor, tau: float, level: float = 0.95) -> Rates:
    """FMR and FNMR at ``tau`` (accept iff score >= tau) with counts and intervals."""
    gen, imp = as_exact(genuine), as_dist(impostor)
    fm = imp.count_ge(tau)
    fnm = gen.count_lt(tau)
    return Rates(float(tau), gen.n, imp.n, fm, fnm, rate(fm, imp.n), rate(fnm, gen.n),
                 clopper_pearson(fm, imp.n, level), clopper_pearson(fnm, gen.n, level))


def max_allowed_false_matches(target: float, n: int) -> int:
    """The largest k with k / n <= target (robust to float rounding of target * n)."""
    k = int(math.floor(target * n))
    while k + 1 <= n and (k + 1) / n <= target:
        k += 1
    while k > 0 and k / n > target:
        k -= 1
    return max(k, 0)


def threshold_at_fmr(impostor, target: float) -> tuple[float, float]:
    """(tau, realised FMR): the smallest tau with FMR(tau) <= target. NaN when there are no impostors."""
    imp = as_dist(impostor)
    if imp.n == 0:
        return math.nan, math.nan
    if not (target >= 0):
        raise ValueError("target FMR must be >= 0")
    k = max_allowed_false_matches(target, imp.n)
    if k >= imp.n:
        tau = imp.kth_largest(imp.n)
    else:
        tau = float(np.nextafter(np.float64(imp.kth_largest(k + 1)), np.inf))
    return tau, rate(imp.count_ge(tau), imp.n)


def fnmr_at_fmr(genuine, impostor, target: float) -> dict:
    """FNMR at the threshold for ``target`` FMR, with tau and the realised FMR."""
    gen = as_exact(genuine)
    tau, fmr = threshold_at_fmr(impostor, target)
    fnmr = rate(gen.count_lt(tau), gen.n) if tau == tau else math.nan
    return {"target_fmr": target, "threshold": tau, "fmr": fmr, "fnmr": fnmr}


def eer(genuine, impostor) -> tuple[float, float]:
    """(EER, tau) under the pinned midpoint convention; (nan, nan) if either side is empty."""
    gen, imp = as_exact(genuine), as_dist(impostor)
    if gen.n == 0 or imp.n == 0:
        return math.nan, math.nan
    u, imp_ge, prev_v, next_v, low_end, high_end = imp.eer_candidates(gen)
    gen_lt = np.searchsorted(gen.values, u, side="left")
    fmr = imp_ge / imp.n
    fnmr = gen_lt / gen.n
    thr = np.empty(u.size)
    thr[1:] = (u[1:] + u[:-1]) / 2.0
    thr[0] = np.nextafter(u[0], -np.inf) if low_end else (prev_v + u[0]) / 2.0
    # next_v (the first value above a partial window) is not needed: the window holds the minimiser.
    if high_end:  # candidate above every score: nothing accepted
        fmr = np.append(fmr, 0.0)
        fnmr = np.append(fnmr, 1.0)
        thr = np.append(thr, np.nextafter(u[-1], np.inf))
    diff = np.abs(fmr - fnmr)
    i = int(np.argmin(diff))  # first minimiser = lowest tau
    return float((fmr[i] + fnmr[i]) / 2.0), float(thr[i])


def auc(genuine, impostor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half)."""
    return as_dist(impostor).auc(as_exact(genuine))


def d_prime(genuine, impostor) -> float:
    gm, gv = as_exact(genuine).moments()
    im, iv = as_dist(impostor).moments()
    denom = math.sqrt((gv + iv) / 2.0) if gv == gv and iv == iv else math.nan
    if denom != denom:
        return math.nan
    if denom == 0:
        return math.inf if gm != im else math.nan
    return abs(gm - im) / denom


def roc_curve(genuine, impostor, max_points: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fmr, tmr, thresholds), thresholds descending from +inf (nothing accepted) to the smallest score.

    Matches ``sklearn.metrics.roc_curve(..., drop_intermediate=False)`` with genuine as positives when
    ``max_points`` is None (an exact distribution is then required)."""
    gen, imp = as_exact(genuine), as_dist(impostor)
    thr, imp_ge, gen_ge = imp.curve_points(gen, max_points or 10**12)
    return imp_ge / max(imp.n, 1) if imp.n else imp_ge * math.nan, \
        gen_ge / gen.n if gen.n else gen_ge * math.nan, thr


def det_curve(genuine, impostor, max_points: int | None = 600) -> dict:
    """DET curve data: FMR and FNMR at a thinned set of thresholds (plot them on normal-deviate axes)."""
    fmr, tmr, thr = roc_curve(genuine, impostor, max_points=max_points)
    return {"threshold": thr, "fmr": fmr, "fnmr": 1.0 - tmr}


def _thin_curve(fmr_desc_thr: np.ndarray, max_points: int) -> np.ndarray:
    """Indices keeping both ends and about ``max_points`` points spread over log-FMR and linear FMR."""
    n = fmr_desc_thr.size
    if n <= max_points:
        return np.arange(n)
    targets = np.concatenate([np.logspace(-8, 0, max_points // 2), np.linspace(0, 1, max_points // 2)])
    pos = np.searchsorted(fmr_desc_thr, targets, side="right") - 1  # fmr is ascending along thresholds desc
    pos = np.clip(pos, 0, n - 1)
    return np.unique(np.concatenate([[0, n - 1], pos]))


# ---------------------------------------------------------------- summary of one (genuine, impostor) set


@dataclass
class VerificationSummary:
    n_genuine: int
    n_impostor: int
    threshold: float
    rates: Rates | None
    eer: float
    eer_threshold: float
    auc: float
    d_prime: float
    fnmr_at_fmr: dict = field(default_factory=dict)
    mean_genuine: float = math.nan
    mean_impostor: float = math.nan

    def as_dict(self) -> dict:
        r = self.rates
        return {
            "n_genuine": self.n_genuine, "n_impostor": self.n_impostor, "threshold": self.threshold,
            "false_matches": r.false_matches if r else None, "false_non_matches": r.false_non_matches if r else None,
            "fmr": r.fmr if r else math.nan, "fnmr": r.fnmr if r else math.nan,
            "fmr_pairs_ci": list(r.fmr_ci) if r else [math.nan, math.nan],
            "fnmr_pairs_ci": list(r.fnmr_ci) if r else [math.nan, math.nan],
            "eer": self.eer, "eer_threshold": self.eer_threshold, "auc": self.auc, "d_prime": self.d_prime,
            "mean_genuine": self.mean_genuine, "mean_impostor": self.mean_impostor,
            "fnmr_at_fmr": {target_key(t): v["fnmr"] for t, v in self.fnmr_at_fmr.items()},
            "fnmr_at_fmr_detail": {target_key(t): v for t, v in self.fnmr_at_fmr.items()},
        }


def target_key(t: float) -> str:
    """"0.01", "0.001", "0.0001", "1e-05" (decimal down to 1e-4, as the results schema asks)."""
    return np.format_float_positional(t, trim="-") if t >= 1e-4 else f"{t:g}"


def summarize(genuine, impostor, tau: float, targets: Sequence[float] = DEFAULT_TARGETS) -> VerificationSummary:
    """Every single-set metric at the given global threshold ``tau``."""
    gen, imp = as_exact(genuine), as_dist(impostor)
    r = rates_at(gen, imp, tau) if tau == tau else None
    e, et = eer(gen, imp)
    return VerificationSummary(
        n_genuine=gen.n, n_impostor=imp.n, threshold=tau, rates=r, eer=e, eer_threshold=et, auc=auc(gen, imp),
        d_prime=d_prime(gen, imp), fnmr_at_fmr={t: fnmr_at_fmr(gen, imp, t) for t in targets},
        mean_genuine=gen.moments()[0], mean_impostor=imp.moments()[0])
