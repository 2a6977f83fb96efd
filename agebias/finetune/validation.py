"""Validation by verification on the held-out identities: EER and FNMR at FMR 1e-3 (REFERENCE.md section 5).

Scores are cosine similarities of the embeddings; accept iff ``score >= tau``. Genuine pairs: every pair of
images of one held-out identity; impostor pairs: every pair of images of two different held-out identities
(a deterministic random subset of ``max_impostors`` when there are more). The metric functions of
``agebias.evaluate.metrics`` (``eer``, ``fnmr_at_fmr``) are used when importable; otherwise the local
implementations below, which follow the same pinned conventions:

- EER: candidate thresholds at the midpoints between consecutive distinct scores and beyond both ends; the tau
  minimising ``|FMR - FNMR|``; EER = ``(FMR + FNMR) / 2`` there.
- FNMR at a target FMR: one tau, the smallest whose FMR does not exceed the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TARGET_FMR = 1e-3


@dataclass
class VerificationResult:
    eer: float
    fnmr_at_fmr: float  # at TARGET_FMR
    fmr_realised: float
    n_genuine: int
    n_impostor: int
    source: str  # which implementation computed the metrics ("agebias.evaluate.metrics" or "local")

    def as_dict(self) -> dict:
        return {"val_eer": self.eer, "val_fnmr_at_fmr_1e-3": self.fnmr_at_fmr, "val_fmr_realised": self.fmr_realised,
                "val_genuine_pairs": self.n_genuine, "val_impostor_pairs": self.n_impostor}


def pair_scores(embeddings: np.ndarray, subjects: list[str], max_impostors: int = 1_000_000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of all genuine pairs and of (up to ``max_impostors``) impostor pairs."""
    emb = np.asarray(embeddings, dtype=np.float64)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    _, ids = np.unique(np.asarray(subjects), return_inverse=True)
    iu, ju = np.triu_indices(len(ids), k=1)
    same = ids[iu] == ids[ju]
    gi, gj = iu[same], ju[same]
    ii, ij = iu[~same], ju[~same]
    if len(ii) > max_impostors:
        pick = np.sort(np.random.default_rng(seed).choice(len(ii), size=max_impostors, replace=False))
        ii, ij = ii[pick], ij[pick]
    genuine = np.einsum("ij,ij->i", emb[gi], emb[gj])
    impostor = np.einsum("ij,ij->i", emb[ii], emb[ij])
    return genuine, impostor


def local_eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    if len(genuine) == 0 or len(impostor) == 0:
        return math.nan
    g, i = np.sort(genuine), np.sort(impostor)
    u = np.unique(np.concatenate([g, i]))
    taus = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    fmr = 1.0 - np.searchsorted(i, taus, side="left") / len(i)  # impostors >= tau
    fnmr = np.searchsorted(g, taus, side="left") / len(g)  # genuine < tau
    k = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[k] + fnmr[k]) / 2)


def local_fnmr_at_fmr(genuine: np.ndarray, impostor: np.ndarray, target: float = TARGET_FMR) -> tuple[float, float]:
    """``(FNMR, realised FMR)`` at the smallest tau whose FMR <= target."""
    if len(genuine) == 0 or len(impostor) == 0:
        return math.nan, math.nan
    desc = np.sort(impostor)[::-1]
    allowed = int(math.floor(target * len(desc) + 1e-9))  # impostors that may be accepted
    tau = -np.inf if allowed >= len(desc) else float(np.nextafter(desc[allowed], np.inf))
    return float(np.mean(genuine < tau)), float(np.mean(impostor >= tau))


def verification_metrics(genuine: np.ndarray, impostor: np.ndarray) -> VerificationResult:
    """EER and FNMR at FMR 1e-3; the evaluator's functions when importable, else the local ones."""
    try:
        from agebias.evaluate.metrics import eer as shared_eer, fnmr_at_fmr as shared_fnmr
    except ImportError:
        shared_eer = shared_fnmr = None
    if shared_eer is not None and len(genuine) and len(impostor):
        eer_value, _tau = shared_eer(genuine, impostor)
        at = shared_fnmr(genuine, impostor, TARGET_FMR)
        return VerificationResult(float(eer_value), float(at["fnmr"]), float(at["fmr"]), len(genuine),
                                  len(impostor), "agebias.evaluate.metrics")
    fnmr, fmr = local_fnmr_at_fmr(genuine, impostor)
    return VerificationResult(local_eer(genuine, impostor), fnmr, fmr, len(genuine), len(impostor), "local")
