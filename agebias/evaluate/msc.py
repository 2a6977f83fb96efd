"""The legacy protocol of the MSc thesis pipeline (MSc_FR_Bias), reproduced, flaws included.

Kept only so that old and new numbers can be put side by side (``--protocol msc``); use the all-pairs protocol
for anything new. What it does, as the thesis's ``src/eval/evaluation.py`` (``compute_sim_scores_fg_net``,
``evaluate_fairness``, ``calculate_fmr_fnmr_test``, ``gini_aggregation_rate``) does it:

- input: the whole photo squashed to 112x112, no alignment, no flip (:mod:`agebias.data.squash`; under ``msc``
  the ``auto`` detector means ``squash``, see :func:`agebias.evaluate.settings.embed_for_protocol`);
- cosine similarity of the embeddings, capped at 1 (``min(1, similarity)``);
- per identity, one mean score per column: ``mated_young`` (images aged 10-15, consecutive pairs only, in the
  order of the file names, i.e. by age), ``mated_middle`` (20-40, consecutive), ``mated_old`` (45-65,
  consecutive), ``young_vs_old`` (the identity's 20-30 x 50-70 images, all cross pairs), ``non_mated`` (the
  identity's 20-30 images x every other identity's 20-30 images); KDE plots of those columns;
- GARBE with two groups, young 5-20 and old 45-70: per identity and group one genuine score (mean of consecutive
  pairs) and one impostor score (mean over the identity's group images x other identities' group images);
  thresholds ``np.arange(0, 1, 0.025)``: 40 values, 0 to 0.975; alpha 0.5 by default; at each threshold FMR =
  share of identities whose impostor mean is >= t, FNMR = share whose genuine mean is not >= t.

Its flaws, kept on purpose and stated in every output: identities without a pair have a NaN mean and count as
false non-matches at every threshold; GARBE is NaN where the mean FMR is 0; scores are averaged per identity (one
number per person, not per pair); only consecutive images are compared; there is no fixed-FMR operating point and
no EER, ROC or DET. Not reproduced: the thesis's FG-NET organiser used only files ending in upper-case ``.JPG``
(see :func:`agebias.data.fgnet.thesis_organiser_moves`); every image is used here and ``organiser`` counts the
ones it would have left out. Where alpha is 0 or 1 the zero-weight Gini is left out (the thesis fixed alpha at
0.5).

Figures (:data:`FIGURES`): ``msc_columns`` (KDE of each column) and ``msc_garbe`` (the GARBE sweep).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from agebias.data.fgnet import ORIGINAL_RE, thesis_organiser_moves
from agebias.evaluate.fairness import gini, weighted
from agebias.evaluate.figure_style import OKABE_ITO, new_figure, save_figure, smooth, style
from agebias.evaluate.settings import EvalSettings

COLUMNS = {
    "mated_young": ("consecutive", (10, 15)),
    "mated_middle": ("consecutive", (20, 40)),
    "mated_old": ("consecutive", (45, 65)),
    "young_vs_old": ("cross", ((20, 30), (50, 70))),
    "non_mated": ("non_mated", (20, 30)),
}
GARBE_GROUPS = {"young": (5, 20), "old": (45, 70)}
THRESHOLDS = np.arange(0, 1, 0.025)  # the thesis's own values (40, 0 .. 0.975), unrounded as it compared them
FLAWS = [
    "identities without a pair get NaN and count as false non-matches at every threshold",
    "GARBE is NaN wherever the mean FMR is 0",
    "one averaged score per identity instead of every pair",
    "only consecutive images of an identity are compared",
    "no fixed-FMR operating point, no EER/ROC/DET",
]
ORGANISER_RULE = ("the thesis's FG-NET organiser used only files ending in upper-case .JPG with an upper-case 'A'; "
                  "agebias uses every image")


def _in(age, lo_hi) -> bool:
    return age is not None and lo_hi[0] <= age <= lo_hi[1]


def evaluate_msc(emb: np.ndarray, subjects: Sequence, ages: Sequence[int | None], st: EvalSettings,
                 paths: Sequence[str] | None = None) -> dict:
    e = np.asarray(emb, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    subj = [str(s) for s in subjects]
    ids = sorted(set(subj))
    order_key = paths or [str(i).zfill(9) for i in range(len(subj))]
    by_id: dict[str, list[int]] = {i: [] for i in ids}
    for k in sorted(range(len(subj)), key=lambda k: (subj[k], -1 if ages[k] is None else ages[k], order_key[k])):
        by_id[subj[k]].append(k)

    def consecutive(idx: list[int]) -> float:
        if len(idx) < 2:
            return math.nan
        return float(np.mean([min(1.0, e[a] @ e[b]) for a, b in zip(idx, idx[1:], strict=False)]))

    def cross(a_idx, b_idx) -> float:
        if not a_idx or not b_idx:
            return math.nan
        return float(np.minimum(e[a_idx] @ e[b_idx].T, 1.0).mean())

    table: dict[str, dict[str, float]] = {c: {} for c in COLUMNS}
    for i in ids:
        idx = by_id[i]
        for col, (kind, rng) in COLUMNS.items():
            if kind == "consecutive":
                table[col][i] = consecutive([k for k in idx if _in(ages[k], rng)])
            elif kind == "cross":
                table[col][i] = cross([k for k in idx if _in(ages[k], rng[0])],
                                      [k for k in idx if _in(ages[k], rng[1])])
            else:
                mine = [k for k in idx if _in(ages[k], rng)]
                others = [k for k in range(len(subj)) if subj[k] != i and _in(ages[k], rng)]
                table[col][i] = cross(mine, others)
    # GARBE sweep, two groups
    gen, imp = {}, {}
    for g, rng in GARBE_GROUPS.items():
        gen[g] = np.array([consecutive([k for k in by_id[i] if _in(ages[k], rng)]) for i in ids])
        imp[g] = np.array([cross([k for k in by_id[i] if _in(ages[k], rng)],
                                 [k for k in range(len(subj)) if subj[k] != i and _in(ages[k], rng)]) for i in ids])
    sweep = {"threshold": THRESHOLDS.tolist(), "garbe": []}
    for g in GARBE_GROUPS:
        sweep[f"fmr_{g}"], sweep[f"fnmr_{g}"] = [], []
    with np.errstate(invalid="ignore"):
        for t in THRESHOLDS:
            fm, fn = [], []
            for g in GARBE_GROUPS:
                fm.append(float(np.mean(imp[g] >= t)))           # NaN impostor: not a false match
                fn.append(float(np.mean(~(gen[g] >= t))))        # NaN genuine: a false non-match (legacy flaw)
                sweep[f"fmr_{g}"].append(fm[-1])
                sweep[f"fnmr_{g}"].append(fn[-1])
            sweep["garbe"].append(weighted(st.alpha, lambda fm=fm: _legacy_gini(fm), lambda fn=fn: _legacy_gini(fn)))
    summary = {}
    for col, vals in table.items():
        v = np.array(list(vals.values()), dtype=float)
        ok = v[np.isfinite(v)]
        summary[col] = {"n_identities": int(ok.size), "n_nan": int(v.size - ok.size),
                        "mean": float(ok.mean()) if ok.size else math.nan,
                        "std": float(ok.std()) if ok.size else math.nan}
    names = [os.path.basename(p) for p in (paths or [])]
    left_out = [n for n in names if ORIGINAL_RE.match(n) and not thesis_organiser_moves(n)]
    warnings = ["Legacy MSc protocol: " + "; ".join(FLAWS) + "."]
    if left_out:
        warnings.append(f"{len(left_out)} images would not have reached the thesis's evaluation ({ORGANISER_RULE}, "
                        f"e.g. {left_out[0]}); they are used here.")
    return {
        "protocol": "msc", "legacy": True, "flaws": FLAWS,
        "data": {"n_images": len(subj), "n_subjects": len(ids)},
        "organiser": {"rule": ORGANISER_RULE, "would_leave_out": len(left_out), "examples": left_out[:5]},
        "columns": table, "column_summary": summary, "garbe_sweep": sweep,
        "garbe_groups": {g: list(r) for g, r in GARBE_GROUPS.items()},
        "warnings": warnings,
    }


def _legacy_gini(x: list[float]) -> float:
    """Two-group Gini as the legacy code computed it: NaN when the mean is 0."""
    a = np.asarray(x, dtype=float)
    if a.mean() == 0 or not np.all(np.isfinite(a)):
        return math.nan
    return gini(a)


def draw_columns(results: dict):
    """``msc_columns``: smoothed densities of each column's per-identity mean scores, one panel per model (a
    Figure; call inside :func:`~agebias.evaluate.figure_style.style`)."""
    names = results["model_order"]
    fig = new_figure(5 * len(names), 3.8)
    axes = fig.subplots(1, len(names), squeeze=False)
    for c, name in enumerate(names):
        ax = axes[0][c]
        for k, (col, vals) in enumerate(results["models"][name]["columns"].items()):
            v = np.array([x for x in vals.values() if x is not None and math.isfinite(x)], dtype=float)
            if v.size < 2:
                continue
            cnt, edges = np.histogram(v, bins=60, range=(-1, 1))
            centres = (edges[1:] + edges[:-1]) / 2
            ax.plot(centres, smooth(cnt / (v.size * (edges[1] - edges[0])), 1.5), color=OKABE_ITO[k],
                    label=f"{col} (n={v.size})")
        ax.set_xlabel("mean cosine similarity per identity")
        ax.set_ylabel("density")
        ax.set_title(f"Legacy MSc protocol columns: {name}")
        ax.legend(fontsize=7)
    return fig


def draw_garbe(results: dict):
    """``msc_garbe``: the legacy GARBE against the swept threshold, one line per model (a Figure; call inside
    :func:`~agebias.evaluate.figure_style.style`)."""
    fig = new_figure(6, 3.8)
    ax = fig.subplots()
    for k, name in enumerate(results["model_order"]):
        sw = results["models"][name]["garbe_sweep"]
        y = np.array([np.nan if v is None else v for v in sw["garbe"]], dtype=float)
        ax.plot(sw["threshold"], y, marker="o", ms=3, color=OKABE_ITO[k], label=name)
    ax.set_xlabel("threshold")
    ax.set_ylabel("GARBE (legacy, young 5-20 vs old 45-70)")
    ax.set_title("Legacy MSc GARBE sweep (gaps: undefined where mean FMR is 0)")
    ax.legend(fontsize=7)
    return fig


# plot kinds of EvaluationResult.plot for msc results (the kind is the file stem)
DRAW = {"msc_columns": draw_columns, "msc_garbe": draw_garbe}


def _file_figure(stem: str):
    def save(results: dict, out: Path, formats) -> dict:
        with style():
            return save_figure(DRAW[stem](results), out, stem, formats)

    save.__name__ = stem
    save.__doc__ = f"Save the '{stem}' figure as ``out/{stem}.<format>``."
    return save


columns_figure, garbe_figure = _file_figure("msc_columns"), _file_figure("msc_garbe")


# this protocol's figures, {stem: (report caption, function)} (see agebias.evaluate.plots)
FIGURES = {
    "msc_columns": ("Legacy MSc protocol: per-identity mean scores by column", columns_figure),
    "msc_garbe": ("Legacy MSc GARBE sweep (young 5-20 vs old 45-70)", garbe_figure),
}
