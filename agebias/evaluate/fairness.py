"""Fairness measures over per-group error rates at one global threshold.

Sources: Gini and GARBE from Howard et al., "Evaluating Proposed Fairness Models for Face Recognition Algorithms"
(2022); FDR from de Freitas Pereira & Marcel, "Fairness in Biometrics: a figure of merit to assess biometric
verification systems" (2021); IR (inequity rate) as the max/min ratio form used in NIST-style reports.

- Gini with the small-sample correction ``G(x) = n/(n-1) * sum_ij |x_i - x_j| / (2 n^2 mean(x))``.
- GARBE = alpha * G(FMR) + (1 - alpha) * G(FNMR); 0 = fair; NaN when a mean rate is 0 or fewer than 2 groups.
- FDR = 1 - (alpha * max|FMR_i - FMR_j| + (1 - alpha) * max|FNMR_i - FNMR_j|); 1 = fair.
- IR = (max FMR / min FMR)^alpha * (max FNMR / min FNMR)^(1 - alpha); NaN when a minimum rate is 0.

A term whose weight is 0 (alpha = 0 or alpha = 1) is left out, so an undefined rate that the measure does not
use cannot make it NaN (e.g. GARBE at alpha = 0 is G(FNMR) even when every FMR is 0).

Groups whose rate is undefined (NaN: no pairs of that kind) are left out of that rate's term; the
:class:`GroupTable` lists them. :class:`GroupTable` plays the part of fairlearn's ``MetricFrame``: per-group counts,
rates and intervals, the overall row, and max/min ratios and max - min differences (direction: "max over min",
"max minus min", so 1 and 0 mean equal groups).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from agebias.evaluate.metrics import Rates


def _finite(x: Sequence[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    return a[np.isfinite(a)]


def gini(x: Sequence[float]) -> float:
    """Gini coefficient with the small-sample correction n/(n-1); NaN for n < 2 or mean 0."""
    a = _finite(x)
    n = a.size
    if n < 2:
        return math.nan
    m = a.mean()
    if m == 0:
        return math.nan
    return float(n / (n - 1) * np.abs(a[:, None] - a[None, :]).sum() / (2 * n * n * m))


def weighted(alpha: float, of_fmr, of_fnmr) -> float:
    """``alpha * of_fmr() + (1 - alpha) * of_fnmr()``, a zero-weight term left out (not evaluated)."""
    total = 0.0
    if alpha != 0:
        total += alpha * of_fmr()
    if alpha != 1:
        total += (1 - alpha) * of_fnmr()
    return total


def garbe(fmr: Sequence[float], fnmr: Sequence[float], alpha: float = 0.5) -> float:
    return weighted(alpha, lambda: gini(fmr), lambda: gini(fnmr))


def _spread(x: Sequence[float]) -> float:
    a = _finite(x)
    return float(a.max() - a.min()) if a.size >= 2 else math.nan


def fdr(fmr: Sequence[float], fnmr: Sequence[float], alpha: float = 0.5) -> float:
    return 1.0 - weighted(alpha, lambda: _spread(fmr), lambda: _spread(fnmr))


def _ratio(x: Sequence[float]) -> float:
    a = _finite(x)
    if a.size < 2:
        return math.nan
    lo = a.min()
    return float(a.max() / lo) if lo > 0 else math.nan


def inequity_rate(fmr: Sequence[float], fnmr: Sequence[float], alpha: float = 0.5) -> float:
    """The weighted geometric mean of the max/min ratios (a log-space weighted sum, zero-weight factor left out)."""
    log_ir = weighted(alpha, lambda: math.log(_ratio(fmr)) if _ratio(fmr) > 0 else math.nan,
                       lambda: math.log(_ratio(fnmr)) if _ratio(fnmr) > 0 else math.nan)
    return math.exp(log_ir) if log_ir == log_ir else math.nan


def fairness_summary(fmr: Sequence[float], fnmr: Sequence[float], alpha: float = 0.5) -> dict:
    """GARBE, FDR, IR and the per-rate pieces, as a JSON-ready dict."""
    return {
        "alpha": alpha,
        "garbe": garbe(fmr, fnmr, alpha), "fdr": fdr(fmr, fnmr, alpha), "ir": inequity_rate(fmr, fnmr, alpha),
        "gini_fmr": gini(fmr), "gini_fnmr": gini(fnmr),
        "fmr_max_minus_min": _spread(fmr), "fnmr_max_minus_min": _spread(fnmr),
        "fmr_max_over_min": _ratio(fmr), "fnmr_max_over_min": _ratio(fnmr),
        "n_groups_fmr": int(_finite(fmr).size), "n_groups_fnmr": int(_finite(fnmr).size),
    }


@dataclass
class GroupTable:
    """Per-group rates at one global threshold, the overall row and their disparities."""

    tau: float
    groups: dict[str, Rates]
    overall: Rates
    alpha: float = 0.5
    extra: dict[str, dict] = field(default_factory=dict)  # per-group extra metrics (eer, auc, ...)

    @property
    def names(self) -> list[str]:
        return list(self.groups)

    def fmr(self) -> np.ndarray:
        return np.array([r.fmr for r in self.groups.values()])

    def fnmr(self) -> np.ndarray:
        return np.array([r.fnmr for r in self.groups.values()])

    def disparities(self) -> dict:
        """Largest and smallest group, max - min and max / min for FMR and FNMR."""
        out = {}
        for metric, vals in (("fmr", self.fmr()), ("fnmr", self.fnmr())):
            ok = [(v, n) for v, n in zip(vals, self.names, strict=True) if np.isfinite(v)]
            if len(ok) < 2:
                out[metric] = {"max_group": None, "min_group": None, "difference": math.nan, "ratio": math.nan,
                               "direction": "max minus min; max over min"}
                continue
            hi = max(ok)
            lo = min(ok)
            out[metric] = {"max_group": hi[1], "min_group": lo[1], "difference": hi[0] - lo[0],
                           "ratio": hi[0] / lo[0] if lo[0] > 0 else math.nan,
                           "direction": "max minus min; max over min"}
        return out

    def fairness(self) -> dict:
        d = fairness_summary(self.fmr(), self.fnmr(), self.alpha)
        d["undefined_fmr_groups"] = [n for n, r in self.groups.items() if not np.isfinite(r.fmr)]
        d["undefined_fnmr_groups"] = [n for n, r in self.groups.items() if not np.isfinite(r.fnmr)]
        d["disparities"] = self.disparities()
        return d

    def rows(self) -> list[dict]:
        """One dict per group plus the overall row; intervals are Clopper-Pearson over pairs (``*_pairs_ci_*``)."""
        out = []
        for name, r in [*self.groups.items(), ("overall", self.overall)]:
            row = {"group": name, "threshold": self.tau, "n_genuine": r.n_genuine, "n_impostor": r.n_impostor,
                   "false_matches": r.false_matches, "false_non_matches": r.false_non_matches,
                   "fmr": r.fmr, "fmr_pairs_ci_low": r.fmr_ci[0], "fmr_pairs_ci_high": r.fmr_ci[1],
                   "fnmr": r.fnmr, "fnmr_pairs_ci_low": r.fnmr_ci[0], "fnmr_pairs_ci_high": r.fnmr_ci[1]}
            row.update({k: v for k, v in self.extra.get(name, {}).items() if not isinstance(v, (dict, list))})
            out.append(row)
        return out
