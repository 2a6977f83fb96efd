"""MixFairFace's instance-level protocol by age group, without any N x N matrix.

Threshold, as MixFairFace's ``Tools.ThresholdOptimizer.Start`` (fuenwang/MixFairFace) chooses it: bisection on
[-1, 1] for at most 70 steps, stopping at the first threshold whose false-positive rate over all impostor pairs
lies just above the target, 0 < FPR - target < target / 10 (else the last midpoint); a pair is accepted iff
``score > thr`` (strictly). This differs from agebias's own operating points (the smallest tau with FMR <=
target, accept iff score >= tau); :func:`mixfair_threshold` reproduces MixFairFace's rule exactly from two order
statistics of the impostor scores (comparisons in exact arithmetic; MixFairFace compared float32 rates).

For each image: TPR = accepted genuine partners / genuine partners, FPR = accepted impostor partners / impostor
partners (N - images of its subject). These are averaged per identity, then the mean and standard deviation
(ddof 0) across identities are reported, overall and per age group (an identity's images in that group;
identities with no image in the group are not counted there). Where MixFairFace gives an image without a genuine
partner the TPR 0/0 (NaN, which poisons its identity's mean), such images are left out of the TPR mean here.
Accepted impostor pairs come from the pair engine (only pairs above the threshold are ever listed), so memory is
O(N + accepted).
"""

from __future__ import annotations

import math

import numpy as np


def mixfair_threshold(impostor, target: float, max_iters: int = 70) -> tuple[float, float, bool]:
    """``(thr, realised FPR, converged)`` by MixFairFace's bisection (see the module notes); accept ``score > thr``.

    ``impostor``: a score distribution (:class:`agebias.evaluate.metrics.ExactDist` or the streamed engine's)."""
    from agebias.evaluate.metrics import max_allowed_false_matches

    n = impostor.n
    if n == 0:
        return math.nan, math.nan, False
    above = max_allowed_false_matches(target, n) + 1          # fewest accepted with FPR > target
    k = max_allowed_false_matches(1.1 * target, n)
    too_many = k if k / n >= 1.1 * target else k + 1           # fewest accepted with FPR >= 1.1 target
    s_above = impostor.kth_largest(above) if above <= n else -math.inf
    s_many = impostor.kth_largest(too_many) if too_many <= n else -math.inf
    lo, hi, thr, converged = -1.0, 1.0, 0.0, False
    for _ in range(max_iters):
        thr = (lo + hi) / 2.0
        fpr_above = s_above > thr       # at least `above` scores > thr
        if fpr_above and not s_many > thr:
            converged = True
            break
        if fpr_above:
            lo = thr
        else:
            hi = thr
    accepted = impostor.count_ge(float(np.nextafter(np.float64(thr), np.inf)))
    return thr, accepted / n, converged


def _mean_std(x: np.ndarray) -> tuple[float, float, int]:
    x = x[np.isfinite(x)]
    return (float(x.mean()), float(x.std()), int(x.size)) if x.size else (math.nan, math.nan, 0)


def instance_level(subjects: np.ndarray, image_group: np.ndarray, labels: list[str], gen_i, gen_j, gen_score,
                   acc_i, acc_j, tau: float, realised_fpr: float, target_fpr: float, thr: float | None = None,
                   converged: bool | None = None) -> dict:
    """Per-identity TPR/FPR at ``score >= tau`` (``tau`` = the float just above MixFairFace's ``thr``, so that
    this is its ``score > thr``); ``acc_*``: every impostor pair accepted at ``tau``."""
    n = subjects.size
    tau64 = np.float64(tau)
    gi, gj = np.asarray(gen_i), np.asarray(gen_j)
    ok = np.asarray(gen_score, dtype=np.float64) >= tau64
    n_gen = np.bincount(gi, minlength=n) + np.bincount(gj, minlength=n)
    n_tp = np.bincount(gi[ok], minlength=n) + np.bincount(gj[ok], minlength=n)
    per_subject = np.bincount(subjects, minlength=int(subjects.max()) + 1 if n else 0)
    n_imp = n - per_subject[subjects]
    n_fp = np.bincount(np.asarray(acc_i, dtype=np.int64), minlength=n) + \
        np.bincount(np.asarray(acc_j, dtype=np.int64), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(n_gen > 0, n_tp / np.maximum(n_gen, 1), np.nan)
        fpr = np.where(n_imp > 0, n_fp / np.maximum(n_imp, 1), np.nan)

    def by_identity(mask: np.ndarray) -> dict:
        out = {}
        for name, v in (("tpr", tpr), ("fpr", fpr)):
            s = subjects[mask]
            vv = v[mask]
            good = np.isfinite(vv)
            cnt = np.bincount(s[good], minlength=per_subject.size)
            tot = np.bincount(s[good], weights=vv[good], minlength=per_subject.size)
            ids = cnt > 0
            m, sd, k = _mean_std(tot[ids] / cnt[ids])
            out[f"{name}_mean"], out[f"{name}_std"], out[f"n_identities_{name}"] = m, sd, k
        return out

    result = {"threshold": tau if thr is None else thr,
              "threshold_rule": "MixFairFace: bisection to FPR just above the target (0 < FPR - target < "
                                "target/10), accept score > threshold",
              "converged": converged, "target_fpr": target_fpr, "realised_fpr": realised_fpr,
              "overall": by_identity(np.ones(n, dtype=bool)), "groups": {}}
    for g, lab in enumerate(labels):
        result["groups"][lab] = by_identity(image_group == g)
    return result
