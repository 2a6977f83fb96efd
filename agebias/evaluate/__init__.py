"""agebias.evaluate: pinned verification metrics, fairness measures, protocols, plots and reports.

The package is also callable: ``agebias.evaluate(embeddings, subjects, ages, ...)`` is :func:`agebias.api.evaluate`
(see :mod:`agebias.callable_package`).

Pure functions of arrays live in :mod:`~agebias.evaluate.metrics` (rates, thresholds, EER, AUC, d', ROC/DET,
Clopper-Pearson) and :mod:`~agebias.evaluate.fairness` (Gini, GARBE, FDR, IR, ``GroupTable``). The library entry
points are in :mod:`~agebias.evaluate.api` (``evaluate_records`` -> an ``EvaluationResult``, ``evaluate_embeddings``
which also writes the files, ``evaluate_scores``, ``match_embeddings``). Module map: ``pairs`` (the one-pass
all-pairs engine), ``grouping`` (age bins, pair groups), ``allpairs`` (the default protocol), ``msc`` (the MSc
thesis protocol), ``verification_bin`` (insightface 10-fold), ``identification`` (FR-NAS ranks), ``instance``
(MixFairFace), ``bootstrap`` (subject resampling), ``result`` (``EvaluationResult``), ``outputs`` (the files),
``plots`` (the figures' entry points; each figure in its ``plot_*`` module), ``figure_style``, ``report``,
``runner`` and ``embed_shards`` (dataset -> embeddings -> results), ``settings``.
"""

from agebias.callable_package import make_callable
from agebias.evaluate.fairness import GroupTable, fairness_summary, fdr, garbe, gini, inequity_rate
from agebias.evaluate.metrics import (ExactDist, Rates, auc, clopper_pearson, d_prime, det_curve, eer, fnmr_at_fmr,
                                      rates_at, roc_curve, summarize, threshold_at_fmr)

__all__ = ["GroupTable", "fairness_summary", "fdr", "garbe", "gini", "inequity_rate", "ExactDist", "Rates", "auc",
           "clopper_pearson", "d_prime", "det_curve", "eer", "fnmr_at_fmr", "rates_at", "roc_curve", "summarize",
           "threshold_at_fmr"]

make_callable(__name__, "agebias.api:evaluate")
