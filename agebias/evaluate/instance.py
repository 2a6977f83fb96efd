"""MixFairFace's instance-level protocol by age group, without any N x N matrix.

One global tau so the overall false-positive rate is about ``fpr`` (1e-5 by default; our threshold-at-FMR
convention on the pooled impostors; self pairs excluded). For each image: TPR = accepted genuine partners /
genuine partners, FPR = accepted impostor partners / impostor partners (N - images of its subject). These are
averaged per identity (images without genuine partners have no TPR and are left out of the TPR mean), then the
mean and standard deviation (ddof 0) across identities are reported, overall and per age group (an identity's
images in that group; identities with no image in the group are not counted there). Accepted impostor pairs
come from the pair engine (only pairs at or above tau are ever listed), so memory is O(N + accepted).
"""

from __future__ import annotations

import math

import numpy as np


def _mean_std(x: np.ndarray) -> tuple[float, float, int]:
    x = x[np.isfinite(x)]
    return (float(x.mean()), float(x.std()), int(x.size)) if x.size else (math.nan, math.nan, 0)


def instance_level(subjects: np.ndarray, image_group: np.ndarray, labels: list[str], gen_i, gen_j, gen_score,
                   acc_i, acc_j, tau: float, realised_fpr: float, target_fpr: float) -> dict:
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

    result = {"threshold": tau, "target_fpr": target_fpr, "realised_fpr": realised_fpr,
              "overall": by_identity(np.ones(n, dtype=bool)), "groups": {}}
    for g, lab in enumerate(labels):
        result["groups"][lab] = by_identity(image_group == g)
    return result
