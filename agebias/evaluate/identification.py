"""FR-NAS closed-set identification metrics by age group, computed in row blocks (never N x N in memory).

As FR-NAS computes them (dooleys/FR-NAS ``src/utils/fairness_utils.py``: ``evaluate``, ``predictions``): every
image is a probe against all others (all-vs-all); each image's embedding is the L2-normalised sum of the
embeddings of the image and its horizontal mirror (*flip fusion*; the evaluator supplies such embeddings, and
records ``flip_fused``). With g = the probe's best same-identity score (self excluded): rank by image = number of
other-identity images scoring strictly higher than g; rank by identity = number of other identities whose best
image scores strictly higher than g. Correct (rank-1) iff rank 0. An image whose identity has no other image has
no mate: FR-NAS counts it as a probe that is never correct (its ranks are -1 there); here it counts in
``n_probes`` and as an error, and ``n_without_mate`` says how many there are; mean ranks are over images with a
mate (FR-NAS's -1 would pull a mean down). Per group (the probe's age group): accuracy, error, mean rank. Across
groups (FR-NAS compares two; with more we use max - min and max / min): disparity = max Acc - min Acc, ratio =
|1 - max Acc / min Acc|, error ratio = |1 - max Err / min Err|, rank disparity, rank ratio likewise.
Ties: a score equal to g does not count against the probe (FR-NAS's order among equal distances is arbitrary).
"""

from __future__ import annotations

import math

import numpy as np

from agebias.progress import bar


def ranks(emb: np.ndarray, subjects: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank_by_image, rank_by_identity, has_mate) per image. ``emb`` unit rows, ``subjects`` int codes."""
    n = emb.shape[0]
    order = np.argsort(subjects, kind="stable")
    e = np.ascontiguousarray(emb[order], dtype=np.float32)
    s = subjects[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    r_img = np.zeros(n, dtype=np.int64)
    r_id = np.zeros(n, dtype=np.int64)
    has_mate = np.zeros(n, dtype=bool)
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
            has_mate[r0:r1] = np.isfinite(gbest)
            pbar.update(1)
    out_img, out_id, out_mate = np.empty_like(r_img), np.empty_like(r_id), np.empty_like(has_mate)
    out_img[order], out_id[order], out_mate[order] = r_img, r_id, has_mate
    return out_img, out_id, out_mate


def _spread(vals: list[float]) -> dict:
    v = [x for x in vals if x == x]
    if len(v) < 2:
        return {"max_minus_min": math.nan, "ratio": math.nan}
    hi, lo = max(v), min(v)
    return {"max_minus_min": hi - lo, "ratio": abs(1 - hi / lo) if lo > 0 else math.nan}


_FLIP_NOTE = {True: "", False: "; these embeddings were NOT fused with their mirror images (FR-NAS fuses them)",
              None: "; whether these embeddings were fused with their mirror images (FR-NAS fuses them) is unknown"}


def summarize_ranks(r_img: np.ndarray, r_id: np.ndarray, has_mate: np.ndarray, image_group: np.ndarray,
                    labels: list[str], ranks_known: bool = True, flip_fused: bool | None = None) -> dict:
    """Per-group accuracy, error and mean ranks, and the across-group disparities. Every image is a probe; one
    without a mate is never correct (FR-NAS)."""
    correct = has_mate & (r_id == 0)
    correct_img = has_mate & (r_img == 0)
    groups = {}
    for g, lab in enumerate(["overall", *labels]):
        m = (image_group == g - 1) if g > 0 else np.ones(has_mate.size, dtype=bool)
        k, mates = int(m.sum()), m & has_mate
        acc = float(correct[m].mean()) if k else math.nan
        known = bool(mates.any()) and ranks_known
        groups[lab] = {"n_probes": k, "n_without_mate": int(k - mates.sum()), "rank1_accuracy": acc,
                       "error": 1 - acc if k else math.nan,
                       "mean_rank_by_identity": float(r_id[mates].mean()) if known else math.nan,
                       "mean_rank_by_image": float(r_img[mates].mean()) if known else math.nan,
                       "rank1_accuracy_by_image": float(correct_img[m].mean()) if k else math.nan}
    per = [groups[lab] for lab in labels]
    acc = [p["rank1_accuracy"] for p in per]
    err = [p["error"] for p in per]
    rank = [p["mean_rank_by_identity"] for p in per]
    return {
        "groups": groups, "flip_fused": flip_fused,
        "disparity": _spread(acc)["max_minus_min"], "ratio": _spread(acc)["ratio"],
        "error_ratio": _spread(err)["ratio"], "rank_disparity": _spread(rank)["max_minus_min"],
        "rank_ratio": _spread(rank)["ratio"],
        "note": "every image is a probe; one without a mate counts as an error (FR-NAS); mean ranks over images "
                "with a mate; across groups: max - min and |1 - max/min| (FR-NAS's two-group measures generalised)"
                + ("" if ranks_known else "; mean ranks not computed (rank-1 only, from the all-pairs pass)")
                + _FLIP_NOTE[flip_fused],
    }


def identification_by_group(emb: np.ndarray, subjects: np.ndarray, image_group: np.ndarray, labels: list[str],
                            block: int = 1024, flip_fused: bool | None = None) -> dict:
    """``emb``: unit rows, flip-fused to follow FR-NAS (say so with ``flip_fused``)."""
    r_img, r_id, has_mate = ranks(emb, subjects, block)
    return summarize_ranks(r_img, r_id, has_mate, image_group, labels, flip_fused=flip_fused)


def rank1_from_pairs(n: int, gen_i: np.ndarray, gen_j: np.ndarray, gen_score: np.ndarray, max_impostor: np.ndarray,
                     image_group: np.ndarray, labels: list[str], flip_fused: bool | None = None) -> dict:
    """Rank-1 accuracy by group without another pass: correct iff the image has a mate and its best genuine
    score is not below its best impostor score (rank 0 by image and by identity alike). Mean ranks are left
    undefined."""
    best = np.full(n, -np.inf, dtype=np.float64)
    np.maximum.at(best, gen_i, gen_score.astype(np.float64))
    np.maximum.at(best, gen_j, gen_score.astype(np.float64))
    has_mate = np.isfinite(best)
    wrong = (max_impostor.astype(np.float64) > best).astype(np.int64)
    return summarize_ranks(wrong, wrong, has_mate, image_group, labels, ranks_known=False, flip_fused=flip_fused)
