"""Search objectives: what a trial is scored on, all **minimised**.

``[objectives]`` maps a name to ``"METRIC@SET"`` or a table ``{metric, on, fmr, alpha, age_bins}``::

    [objectives]
    error    = "eer@val"                                   # verification EER on the held-out identities
    fairness = { metric = "fdr", on = "val", fmr = 0.1 }   # minimised as 1 - FDR

METRIC: ``eer``; ``fnmr`` (FNMR at the target FMR ``fmr``); ``garbe`` (0 = fair); ``fdr`` (minimised as
``1 - FDR``, 0 = fair); ``ir`` (inequity rate, 1 = fair). SET: ``val`` (the trial's own held-out identities,
the same identity split the trainer used) or ``eval`` (the experiment's ``[data] eval`` set).

Conventions (those of :mod:`agebias.evaluate`, whose pair engine and metric functions compute them): cosine scores
of L2-normalised float32 embeddings of every image pair;
one global threshold tau at target FMR ``fmr`` (default 1e-2) from all impostor pairs; per age group FMR and
FNMR at tau over the pairs whose two images are both in that group (cross-group pairs count only in the
overall rates); GARBE, FDR and IR from :mod:`agebias.evaluate.fairness` with ``alpha`` (default 0.5). Age
groups: the evaluator's inclusive bins (``age_bins``, default ``0-12,13-19,20-39,40-69``). A metric that is
undefined (NaN, e.g. GARBE with a mean rate of 0) fails the trial with that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from agebias.errors import UserError
from agebias.evaluate import fairness
from agebias.evaluate import metrics as M
from agebias.evaluate.grouping import DEFAULT_AGE_BINS, make_grouping
from agebias.evaluate.pairs import ExactNeeds, exactly, score_all_pairs

METRICS = ("eer", "fnmr", "garbe", "fdr", "ir")
SETS = ("val", "eval")
DEFAULT_FMR = 1e-2


@dataclass(frozen=True)
class Objective:
    name: str
    metric: str
    on: str
    fmr: float = DEFAULT_FMR
    alpha: float = 0.5
    age_bins: str | None = None

    @property
    def label(self) -> str:
        shown = "1 - FDR" if self.metric == "fdr" else self.metric.upper()
        return f"{self.name}: {shown} on {self.on}" + (f" @ FMR {self.fmr:g}" if self.metric != "eer" else "")

    def minimised(self, metrics: dict[str, float]) -> float:
        """The value Optuna minimises, from the metric dict of :func:`pair_metrics`."""
        value = float(metrics[self.metric])
        return 1.0 - value if self.metric == "fdr" else value


def parse_objectives(table: dict[str, Any]) -> list[Objective]:
    if not isinstance(table, dict) or not table:
        raise UserError("the experiment file needs an [objectives] table, e.g. error = \"eer@val\", "
                        "fairness = \"garbe@val\"")
    out = []
    for name, raw in table.items():
        where = f"[objectives] {name}"
        if isinstance(raw, str):
            metric, _, on = raw.partition("@")
            raw = {"metric": metric, "on": on or "val"}
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected \"METRIC@SET\" or a table {{metric, on, fmr, alpha, age_bins}}")
        unknown = set(raw) - {"metric", "on", "fmr", "alpha", "age_bins"}
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        metric, on = str(raw.get("metric", "")).strip().lower(), str(raw.get("on", "val")).strip().lower()
        if metric not in METRICS:
            raise UserError(f"{where}: metric '{metric}' is not one of {', '.join(METRICS)}")
        if on not in SETS:
            raise UserError(f"{where}: set '{on}' is not one of {', '.join(SETS)}")
        fmr, alpha = float(raw.get("fmr", DEFAULT_FMR)), float(raw.get("alpha", 0.5))
        if not 0 < fmr < 1 or not 0 <= alpha <= 1:
            raise UserError(f"{where}: need 0 < fmr < 1 and 0 <= alpha <= 1")
        out.append(Objective(str(name), metric, on, fmr, alpha, raw.get("age_bins")))
    return out


def pair_metrics(embeddings: np.ndarray, subjects: Sequence[str], ages: Sequence[int | None],
                 age_bins: str | None = None, fmr: float = DEFAULT_FMR, alpha: float = 0.5) -> dict[str, Any]:
    """All-pairs verification and fairness numbers of one embedded set (conventions in the module docstring),
    computed by the evaluator's engine (:func:`agebias.evaluate.pairs.score_all_pairs`; memory O(N*D + block^2)) and
    metric functions.

    Returns ``eer``, ``fnmr``, ``fmr`` (realised), ``tau``, ``garbe``, ``fdr``, ``ir`` and ``groups`` (one dict per
    age group: ``name``, ``genuine``, ``impostor``, ``fmr``, ``fnmr``)."""
    gp = make_grouping(list(ages), "both", age_bins or DEFAULT_AGE_BINS)
    ps = score_all_pairs(embeddings, list(subjects), gp,
                         needs=ExactNeeds(fmrs=(fmr,), group_fmrs=(), group_eer=False))

    def compute(p) -> dict[str, Any]:
        gen_all, imp_all = M.ExactDist(p.gen_score), p.impostor_dist(None)
        value, _ = M.eer(gen_all, imp_all)
        tau, realised = M.threshold_at_fmr(imp_all, fmr)
        gen_groups = gp.key_group[p.genuine_keys()]
        rows = []
        for g, name in enumerate(gp.labels):
            gen_g, imp_g = M.ExactDist(p.gen_score[gen_groups == g]), p.impostor_dist(gp.keys_of_group(g))
            r = M.rates_at(gen_g, imp_g, tau) if tau == tau else None
            rows.append({"name": name, "genuine": gen_g.n, "impostor": imp_g.n,
                         "fmr": r.fmr if r else math.nan, "fnmr": r.fnmr if r else math.nan})
        fmrs, fnmrs = [r["fmr"] for r in rows], [r["fnmr"] for r in rows]
        fnmr_all = M.rate(gen_all.count_lt(tau), gen_all.n) if tau == tau else math.nan
        return {"eer": value, "fnmr": fnmr_all, "fmr": realised, "tau": tau, "target_fmr": fmr,
                "garbe": fairness.garbe(fmrs, fnmrs, alpha), "fdr": fairness.fdr(fmrs, fnmrs, alpha),
                "ir": fairness.inequity_rate(fmrs, fnmrs, alpha), "genuine": gen_all.n, "impostor": imp_all.n,
                "groups": rows}

    return exactly(ps, compute)


def objective_values(objectives: Sequence[Objective], metrics_by_key: dict[tuple, dict[str, Any]]) -> list[float]:
    """Minimised values in objective order; ``metrics_by_key[(on, fmr, alpha, age_bins)]`` from
    :func:`pair_metrics`. A NaN value raises ``ValueError`` naming the objective (the trial then fails)."""
    values = []
    for o in objectives:
        v = o.minimised(metrics_by_key[metric_key(o)])
        if not math.isfinite(v):
            raise ValueError(f"objective '{o.name}' ({o.label}) is undefined on this trial (NaN): too few pairs "
                             f"per age group or a mean error rate of 0; try a larger fmr")
        values.append(v)
    return values


def metric_key(o: Objective) -> tuple:
    return (o.on, o.fmr, o.alpha, o.age_bins)
