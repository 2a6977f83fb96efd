"""insightface's 10-fold verification protocol on ``.bin`` sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW).

Embedding = L2-normalise(emb(image) + emb(horizontally flipped image)); distance = squared L2 between the two
images of a pair; thresholds 0, 0.01, ..., 4 (predict "same" iff distance < threshold); 10 folds taken in order
without shuffling (insightface's ``KFold(n_splits=10, shuffle=False)``: the first ``n % 10`` folds get one extra
pair); for each fold the threshold with the best accuracy on the other nine folds (first one on ties) is applied
to it. Reported: mean and standard deviation (ddof 0, as numpy) of the 10 fold accuracies, and the best threshold
per fold.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from agebias.evaluate.settings import EmbedSettings

THRESHOLDS = np.arange(0, 4, 0.01)


def kfold_in_order(n: int, k: int = 10) -> list[np.ndarray]:
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    edges = np.r_[0, np.cumsum(sizes)]
    return [np.arange(edges[i], edges[i + 1]) for i in range(k)]


def ten_fold_accuracy(dist: np.ndarray, issame: np.ndarray, n_folds: int = 10,
                      thresholds: np.ndarray = THRESHOLDS) -> dict:
    """Fold accuracies for squared-L2 distances of pairs (predict same iff dist < threshold)."""
    dist = np.asarray(dist, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    pred = dist[None, :] < thresholds[:, None]          # (T, P)
    correct = pred == same[None, :]
    accs, best = [], []
    for test in kfold_in_order(dist.size, n_folds):
        train = np.ones(dist.size, dtype=bool)
        train[test] = False
        t = int(np.argmax(correct[:, train].mean(axis=1)))
        best.append(float(thresholds[t]))
        accs.append(float(correct[t, test].mean()))
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "fold_accuracies": accs, "fold_thresholds": best, "n_pairs": int(dist.size),
            "n_same": int(same.sum())}


def pair_distances(emb: np.ndarray) -> np.ndarray:
    """Squared L2 between rows 2k and 2k+1 of unit embeddings."""
    a, b = emb[0::2].astype(np.float64), emb[1::2].astype(np.float64)
    return ((a - b) ** 2).sum(axis=1)


def evaluate_bin(path: str | os.PathLike, models: Sequence[str], embed: EmbedSettings | None = None) -> dict:
    """Run the protocol for each model spec on one .bin file (embeddings fused with the mirrored face, as
    insightface does; ``embed`` gives the device, batch size, backend and checkpoint options)."""
    from agebias.data.verification_bin import read_bin
    from agebias.errors import UserError
    from agebias.evaluate.runner import model_names
    from agebias.models.embedder import build_embedder

    embed = embed or EmbedSettings()
    images, issame = read_bin(path)  # two images per pair, or UserError
    if len(issame) < 10:
        raise UserError(f"{path}: {len(issame)} pairs; the 10-fold protocol needs at least 10")
    import cv2

    crops = np.stack([im if im.shape[:2] == (112, 112) else cv2.resize(im, (112, 112), interpolation=cv2.INTER_AREA)
                      for im in images]).astype(np.uint8)
    out = {"protocol": "insightface 10-fold", "file": str(path), "n_pairs": len(issame), "models": {}}
    for name, spec in zip(model_names(models), models, strict=True):
        emb = build_embedder(spec, arch=embed.arch, device=embed.device, flip=True, batch_size=embed.batch_size,
                             trust_checkpoint=embed.trust_checkpoint, backend=embed.backend).embed(crops)
        out["models"][name] = {"spec": str(spec), **ten_fold_accuracy(pair_distances(emb), np.asarray(issame))}
    return out
