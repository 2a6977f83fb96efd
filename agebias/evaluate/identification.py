"""FR-NAS closed-set identification metrics by age group, computed in row blocks (never N x N in memory).

Every image is a probe against all others (all-vs-all). With g = its best same-identity score (self excluded):
rank by image = number of other-identity images scoring strictly higher than g; rank by identity = number of other
identities whose best image scores strictly higher than g. Correct (rank-1) iff rank 0. Images whose identity has
no other image are not probes. Per group (the probe's age group): accuracy, error, mean rank. Across groups
(FR-NAS compares two; with more we use max - min and max / min): disparity = max Acc - min Acc, ratio =
|1 - max Acc / min Acc|, error ratio = |1 - max Err / min Err|, rank disparity, rank ratio likewise.
Embeddings as given (FR-NAS sums each image's embedding with its flipped copy before normalising; pass such
embeddings in to follow it exactly).
"""

from __future__ import annotations

import math

import numpy as np

from agebias.progress import bar


def ranks(emb: np.ndarray, subjects: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank_by_image, rank_by_identity, is_probe) per image. ``emb`` unit rows, ``subjects`` int codes."""
    n = emb.shape[0]
    order = np.argsort(subjects, kind="stable")
    e = np.ascontiguousarray(emb[order], dtype=np.float32)
    s = subjects[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    r_img = np.zeros(n, dtype=np.int64)
    r_id = np.zeros(n, dtype=np.int64)
    probe = np.zeros(n, dtype=bool)
    with bar(-(-n // block), "identification ranks") as pbar:
        for r0 in range(0, n, block):
            r1 = min(r0 + block, n)
            sc = e[r0:r1] @ e.T  # (b, N)
            rows = np.arange(r1 - r0)
            sc[rows, rows + r0] = -np.inf  # self
            same = s[r0:r1][:, None] == s[None, :]
            gbest = np.where(same, sc, -np.inf).max(axis=1)
            imp = np.where(same, -np.inf, sc)
            r_img[r0:r1] = (imp > gbest[:, None]).sum(axis=1)
            per_id = np.maximum.reduceat(imp, starts, axis=1)  # (b, n_ids)
            r_id[r0:r1] = (per_id > gbest[:, None]).sum(axis=1)
            probe[r0:r1] = np.isfinite(gbest)
            pbar.update(1)
    out_img, out_id, out_probe = np.empty_like(r_img), np.empty_like(r_id), np.empty_like(probe)
    out_img[order], out_id[order], out_probe[order] = r_img, r_id, probe
    return out_img, out_id, out_probe


def _spread(vals: list[float]) -> dict:
    v = [x for x in vals if x == x]
    if len(v) < 2:
        return {"max_minus_min": math.nan, "ratio": math.nan}
    hi, lo = max(v), min(v)
    return {"max_minus_min": hi - lo, "ratio": abs(1 - hi / lo) if lo > 0 else math.nan}


def summarize_ranks(r_img: np.ndarray, r_id: np.ndarray, probe: np.ndarray, image_group: np.ndarray,
                    labels: list[str], ranks_known: bool = True) -> dict:
    """Per-group accuracy, error and mean ranks, and the across-group disparities."""
    groups = {}
    for g, lab in enumerate(["overall", *labels]):
        m = probe & ((image_group == g - 1) if g > 0 else True)
        k = int(m.sum())
        acc = float((r_id[m] == 0).mean()) if k else math.nan
        groups[lab] = {"n_probes": k, "rank1_accuracy": acc, "error": 1 - acc if k else math.nan,
                       "mean_rank_by_identity": float(r_id[m].mean()) if k and ranks_known else math.nan,
                       "mean_rank_by_image": float(r_img[m].mean()) if k and ranks_known else math.nan,
                       "rank1_accuracy_by_image": float((r_img[m] == 0).mean()) if k else math.nan}
    per = [groups[lab] for lab in labels]
    acc = [p["rank1_accuracy"] for p in per]
    err = [p["error"] for p in per]
    rank = [p["mean_rank_by_identity"] for p in per]
    return {
        "groups": groups,
        "disparity": _spread(acc)["max_minus_min"], "ratio": _spread(acc)["ratio"],
        "error_ratio": _spread(err)["ratio"], "rank_disparity": _spread(rank)["max_minus_min"],
        "rank_ratio": _spread(rank)["ratio"],
        "note": "across groups: max - min and |1 - max/min| (FR-NAS's two-group measures generalised)"
                + ("" if ranks_known else "; mean ranks not computed (rank-1 only, from the all-pairs pass)"),
    }


def identification_by_group(emb: np.ndarray, subjects: np.ndarray, image_group: np.ndarray, labels: list[str],
                            block: int = 1024) -> dict:
    r_img, r_id, probe = ranks(emb, subjects, block)
    return summarize_ranks(r_img, r_id, probe, image_group, labels)


def rank1_from_pairs(n: int, gen_i: np.ndarray, gen_j: np.ndarray, gen_score: np.ndarray, max_impostor: np.ndarray,
                     image_group: np.ndarray, labels: list[str]) -> dict:
    """Rank-1 accuracy by group without another pass: correct iff the best genuine score of an image is not
    below its best impostor score (rank 0 by image and by identity alike). Mean ranks are left undefined."""
    best = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(best, gen_i, gen_score.astype(np.float64))
    np.maximum.at(best, gen_j, gen_score.astype(np.float64))
    probe = np.isfinite(best)
    wrong = (max_impostor.astype(np.float64) > best).astype(np.int64)
    return summarize_ranks(wrong, wrong, probe, image_group, labels, ranks_known=False)
