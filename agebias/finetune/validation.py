"""Validation on the held-out identities: EER and FNMR at FMR 1e-3 over every pair of their images.

The pairs are scored by the evaluator's all-pairs engine (:func:`agebias.evaluate.pairs.score_all_pairs`) and the
numbers come from the evaluator's metric functions (:mod:`agebias.evaluate.metrics`), so validation follows exactly
the conventions of ``agebias evaluate``: cosine scores of L2-normalised float32 embeddings, accept iff
``score >= tau``; genuine pairs are all pairs of images of one identity, impostor pairs all pairs of images of two
identities (every one of them: large sets are streamed in one pass with exact thresholds and counts); EER at the
candidate threshold minimising |FMR - FNMR|; FNMR at the smallest tau whose FMR does not exceed 1e-3, reported with
the FMR actually realised there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from agebias.evaluate import metrics as M
from agebias.evaluate.grouping import make_grouping
from agebias.evaluate.pairs import ExactNeeds, exactly, score_all_pairs

log = logging.getLogger(__name__)

TARGET_FMR = 1e-3


@dataclass(frozen=True)
class VerificationResult:
    """Validation numbers of one epoch (NaN where a side has no pairs)."""

    eer: float
    fnmr_at_fmr: float      # at TARGET_FMR
    fmr_realised: float     # the FMR at that threshold (<= TARGET_FMR)
    n_genuine: int
    n_impostor: int

    def as_dict(self) -> dict:
        return {"val_eer": self.eer, "val_fnmr_at_fmr_1e-3": self.fnmr_at_fmr, "val_fmr_realised": self.fmr_realised,
                "val_genuine_pairs": self.n_genuine, "val_impostor_pairs": self.n_impostor}


def validate_embeddings(embeddings: np.ndarray, subjects: Sequence, *, seed: int = 0) -> VerificationResult:
    """EER and FNMR at FMR 1e-3 of all pairs of ``embeddings`` (N, D), ``subjects`` one identity label per row.

    ``seed`` only steers the engine's planning sample (speed, never the numbers). Embeddings with non-finite or
    all-zero rows (a diverged model) give NaN metrics and a warning instead of an error."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(subjects):
        raise ValueError(f"need one embedding row per subject label, got {emb.shape} for {len(subjects)} labels")
    if not np.all(np.isfinite(emb)) or np.any(~emb.any(axis=1)):
        _, counts = np.unique(np.asarray([str(s) for s in subjects]), return_counts=True)
        n_gen = int((counts * (counts - 1) // 2).sum())
        n = len(subjects)
        log.warning("validation embeddings contain NaN, infinite or all-zero rows (diverged model?): metrics are NaN")
        return VerificationResult(math.nan, math.nan, math.nan, n_gen, n * (n - 1) // 2 - n_gen)
    ps = score_all_pairs(emb, subjects, make_grouping([None] * len(subjects)),
                         needs=ExactNeeds(fmrs=(TARGET_FMR,), group_fmrs=(), group_eer=False), seed=seed)

    def compute(p) -> VerificationResult:
        gen, imp = M.ExactDist(p.gen_score), p.impostor_dist(None)
        at = M.fnmr_at_fmr(gen, imp, TARGET_FMR)
        return VerificationResult(float(M.eer(gen, imp)[0]), float(at["fnmr"]), float(at["fmr"]), gen.n, imp.n)

    return exactly(ps, compute)
