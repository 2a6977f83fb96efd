"""Subject-level bootstrap intervals: per-group and overall FMR/FNMR, FNMR of any set of genuine pairs, GARBE
and FDR at a fixed threshold.

These give the default intervals of agebias (``fmr_ci``/``fnmr_ci`` in results.json, groups.csv and the reports;
widened to the Clopper-Pearson interval where that is wider, :func:`agebias.evaluate.allpairs.reported_ci`): the
pairs of one subject share that subject's images and are correlated, so intervals that treat pairs as independent
draws (Clopper-Pearson, kept as ``fmr_pairs_ci``/``fnmr_pairs_ci``) are too narrow.

Subjects (not pairs) are resampled with replacement; replicate b gives subject s the weight w_bs (how often it was
drawn). A genuine pair of subject s counts w_bs times; an impostor pair of subjects a != b counts w_ba * w_bb
times (pairs between two copies of one subject are not formed). Per group g, with image classes c and the
group's impostor look-up L_g (1 where a (class, class) pair belongs to g):

- FNMR_g(w) = sum_s w_s rejected_gs / sum_s w_s genuine_gs
- FMR_g(w)  = sum_{(a,b) accepted} w_a w_b / (1/2) [ sum_{x,y} (W H)_x L_g (W H)_y - sum_s w_s^2 h_s L_g h_s ],
  H = images per subject and class (overall: L = 1 everywhere).

Everything is a few matrix products over replicates x subjects (vectorised; no per-replicate loop over pairs).
The threshold is held at its point estimate, so the interval reflects which subjects were sampled at that
operating point. Percentile intervals; replicates where a measure is undefined are dropped and counted.
"""

from __future__ import annotations

import math

import numpy as np

from agebias.evaluate.fairness import fdr, garbe
from agebias.evaluate.grouping import PairGrouping


def resample_weights(n_subjects: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_subjects) float64 (``n_subjects`` >= 1): how often each subject is drawn in each of ``n_boot``
    resamples of ``n_subjects`` draws with replacement. Multinomial counts, made by counting uniform draws (about 3x
    faster than ``Generator.multinomial``), about four million draws at a time (many subjects need little memory
    beyond the result)."""
    w = np.empty((n_boot, n_subjects))
    step = max(1, (1 << 22) // max(n_subjects, 1))  # replicates per chunk
    for a in range(0, n_boot, step):
        k = min(step, n_boot - a)
        draws = rng.integers(0, n_subjects, size=(k, n_subjects), dtype=np.int64)
        draws += np.arange(k, dtype=np.int64)[:, None] * n_subjects  # replicate r's draws count in row r
        w[a:a + k] = np.bincount(draws.ravel(), minlength=k * n_subjects).reshape(k, n_subjects)
    return w


def subject_bootstrap(grouping: PairGrouping, subjects: np.ndarray, gen_i: np.ndarray, gen_j: np.ndarray,
                      gen_accept: np.ndarray, acc_i: np.ndarray, acc_j: np.ndarray, *, alpha: float = 0.5,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                      weights: np.ndarray | None = None,
                      genuine_sets: dict[str, np.ndarray] | None = None) -> dict:
    """Percentile intervals over ``n_boot`` subject resamples: GARBE, FDR, per-group and overall FMR/FNMR, and
    the FNMR of each of ``genuine_sets`` (name -> boolean mask over the genuine pairs).

    ``subjects``: (N,) integer subject code per image; ``gen_*``: genuine pairs and whether each was accepted;
    ``acc_*``: impostor pairs accepted at the threshold."""
    from scipy import sparse

    n_g = len(grouping.labels)
    n_s = int(subjects.max()) + 1 if subjects.size else 0
    if n_boot <= 0 or n_s < 2:
        return {"n_boot": 0, "note": "bootstrap not run (needs >= 2 subjects and n_boot > 0)"}
    if weights is None:
        w = resample_weights(n_s, n_boot, np.random.default_rng(seed))  # (B, S)
    else:  # explicit replicate weights (tests: all ones reproduce the point estimate)
        w = np.asarray(weights, dtype=np.float64).reshape(-1, n_s)
        n_boot = w.shape[0]

    c = grouping.n_classes
    h = np.zeros((n_s, c))
    np.add.at(h, (subjects, grouping.image_class), 1.0)
    wh = w @ h                                   # (B, C)
    w2 = w ** 2
    gg = grouping.genuine_groups(gen_i, gen_j)
    ag = grouping.key_group[grouping.pair_keys(acc_i, acc_j)]
    acc_a, acc_b = subjects[acc_i], subjects[acc_j]
    gen_s = subjects[gen_i]
    rejected = ~np.asarray(gen_accept, dtype=bool)

    w_t = np.ascontiguousarray(w.T)  # (S, B)
    w_t32 = w_t.astype(np.float32)
    w_max = float(w.max(initial=0))

    def accepted_weight(m: np.ndarray) -> np.ndarray:
        """sum over the accepted impostor pairs (a, b) in mask m of w_a * w_b, per replicate."""
        a, b = acc_a[m], acc_b[m]
        if not a.size:
            return np.zeros(n_boot)
        mat = sparse.csr_matrix((np.ones(a.size), (a, b)), shape=(n_s, n_s))
        # integer counts: (mat @ w_t) is exact in float32 while its entries stay below 2**24 (about twice as fast)
        exact32 = float(mat.sum(axis=1).max()) * w_max < 2 ** 24
        per_subject = mat.astype(np.float32) @ w_t32 if exact32 else mat @ w_t
        return np.einsum("sb,sb->b", per_subject, w_t, dtype=np.float64)

    def fmr_of(lg: np.ndarray, num: np.ndarray) -> np.ndarray:
        """FMR per replicate of the impostor pairs whose class pair has weight 1 in ``lg`` (``num``: their accepted
        weight)."""
        lg = (lg + lg.T) / 2.0  # unordered pairs: symmetric
        self_terms = np.einsum("sc,cd,sd->s", h, lg, h)
        denom = 0.5 * (np.einsum("bc,cd,bd->b", wh, lg, wh) - w2 @ self_terms)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, num / np.where(denom > 0, denom, 1), np.nan)

    def fnmr_of(m: np.ndarray) -> np.ndarray:
        """FNMR per replicate of the genuine pairs in mask m."""
        tot = np.bincount(gen_s[m], minlength=n_s).astype(np.float64)
        rej = np.bincount(gen_s[m], weights=rejected[m].astype(np.float64), minlength=n_s)
        d = w @ tot
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, (w @ rej) / np.where(d > 0, d, 1), np.nan)

    kg = grouping.key_group[grouping.key_lut]    # (C, C) impostor group of a class pair
    fmr = np.full((n_boot, n_g), np.nan)
    fnmr = np.full((n_boot, n_g), np.nan)
    num_all = accepted_weight(ag < 0)  # pairs of no group; the overall numerator is this plus each group's
    for g in range(n_g):
        num = accepted_weight(ag == g)
        num_all += num
        fmr[:, g] = fmr_of((kg == g).astype(np.float64), num)
        fnmr[:, g] = fnmr_of(gg == g)
    all_fmr = fmr_of(np.ones((c, c)), num_all)
    all_fnmr = fnmr_of(np.ones(gen_s.size, dtype=bool))
    gar = np.array([garbe(fmr[b], fnmr[b], alpha) for b in range(n_boot)])
    fd = np.array([fdr(fmr[b], fnmr[b], alpha) for b in range(n_boot)])
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def ci(x):
        x = x[np.isfinite(x)]
        return [float(v) for v in np.percentile(x, q)] if x.size else [math.nan, math.nan]

    return {
        "n_boot": int(n_boot), "seed": seed, "level": level, "unit": "subject",
        "garbe_ci": ci(gar), "fdr_ci": ci(fd),
        "garbe_valid_replicates": int(np.isfinite(gar).sum()), "fdr_valid_replicates": int(np.isfinite(fd).sum()),
        "replicate_fmr": fmr if weights is not None else None,
        "replicate_fnmr": fnmr if weights is not None else None,
        "overall_fmr_ci": ci(all_fmr), "overall_fnmr_ci": ci(all_fnmr),
        "group_fmr_ci": {lab: ci(fmr[:, g]) for g, lab in enumerate(grouping.labels)},
        "group_fnmr_ci": {lab: ci(fnmr[:, g]) for g, lab in enumerate(grouping.labels)},
        "genuine_set_fnmr_ci": {name: ci(fnmr_of(np.asarray(m, dtype=bool)))
                                for name, m in (genuine_sets or {}).items()},
    }
