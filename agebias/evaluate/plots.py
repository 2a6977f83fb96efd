"""Figures drawn from results.json (never computing metrics), and the figures of each protocol.

Each protocol module names its own figures in a ``FIGURES`` dict, ``{stem: (title, function)}``; a figure function
takes ``(results, out, formats)`` and returns ``{format: path}`` (empty when it has nothing to draw). The
all-pairs protocol's figures live here (several models side by side, in every requested format):
``score_distributions`` (genuine/impostor histograms per age group with a smoothed density and the tau line),
``genuine_vs_age_gap``, ``det`` (per group, normal-deviate axes), ``fairness_vs_fmr`` (GARBE and FDR),
``group_rates`` (per-group FMR and FNMR bars with 95 % intervals), ``impostor_heatmap`` (group x group FMR).
The legacy ``msc`` protocol's figures are in :mod:`agebias.evaluate.msc`; the shared look in
:mod:`agebias.evaluate.figure_style`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from agebias.evaluate import msc
from agebias.evaluate.figure_style import GENUINE, IMPOSTOR, OKABE_ITO, pyplot, save_figure, smooth

FigureFunction = Callable[[dict, Path, Sequence[str]], dict]


def _sections(results: dict) -> list[tuple[str, dict]]:
    """The models with all-pairs group results and histograms, in the results' order (the figures draw these;
    with none, every all-pairs figure has nothing to draw)."""
    return [(m, results["models"][m]) for m in results["model_order"] if "groups" in results["models"][m]
            and "histograms" in results["models"][m]]


def score_distributions(results: dict, out: Path, formats) -> dict:
    secs = _sections(results)
    if not secs:
        return {}
    plt = pyplot()
    labels = ["overall", *secs[0][1]["pair_grouping"]["labels"]]
    fig, axes = plt.subplots(len(secs), len(labels), figsize=(2.8 * len(labels), 2.3 * len(secs) + 0.6),
                             squeeze=False, layout="constrained")
    for r, (name, sec) in enumerate(secs):
        h = sec["histograms"]
        edges = np.asarray(h["edges"])
        centres = (edges[1:] + edges[:-1]) / 2
        width = edges[1] - edges[0]
        for c, lab in enumerate(labels):
            ax = axes[r][c]
            d = h["groups"].get(lab)
            if d is None:
                ax.set_visible(False)
                continue
            for key, col, txt in (("genuine", GENUINE, "genuine"), ("impostor", IMPOSTOR, "impostor")):
                cnt = np.asarray(d[key], dtype=float)
                tot = cnt.sum()
                if tot == 0:
                    continue
                dens = cnt / (tot * width)
                ax.stairs(dens, edges, fill=True, color=col, alpha=0.35, label=f"{txt} (n={int(tot):,})")
                sd = math.sqrt(max((cnt * (centres - (cnt * centres).sum() / tot) ** 2).sum() / tot, width ** 2))
                bw = min(max(0.9 * sd * tot ** -0.2 / width, 1.5), 12.0)  # Silverman's rule, in bins
                ax.plot(centres, smooth(dens, bw), color=col, lw=1.2)
            tau = sec["overall"].get("threshold")
            if tau is not None and math.isfinite(tau):
                ax.axvline(tau, color="black", ls="--", lw=1, label=f"tau = {tau:.3f}")
            used = np.flatnonzero(np.asarray(d["genuine"]) + np.asarray(d["impostor"]))
            if used.size:
                ax.set_xlim(edges[max(used[0] - 2, 0)], edges[min(used[-1] + 3, edges.size - 1)])
            ax.set_title(f"{name}: {lab}" if len(secs) > 1 else lab)
            if r == len(secs) - 1:
                ax.set_xlabel("cosine similarity")
            if c == 0:
                ax.set_ylabel("density")
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle("Genuine and impostor score distributions by age group")
    files = save_figure(fig, out, "score_distributions", formats)
    plt.close(fig)
    return files


def genuine_vs_age_gap(results: dict, out: Path, formats) -> dict:
    secs = _sections(results)
    if not secs:
        return {}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for k, (name, sec) in enumerate(secs):
        d = sec.get("genuine_vs_gap") or {}
        gap, score = np.asarray(d.get("age_gap", [])), np.asarray(d.get("score", []))
        if gap.size == 0:
            continue
        col = OKABE_ITO[k % len(OKABE_ITO)]
        ax.scatter(gap + (k - 0.5) * 0.15, score, s=6, alpha=0.35, color=col, label=f"{name} (pairs)")
        ug = np.unique(gap)
        ax.plot(ug, [score[gap == g].mean() for g in ug], color=col, lw=1.5, label=f"{name} (mean per gap)")
        tau = sec["overall"].get("threshold")
        if tau is not None and math.isfinite(tau):
            ax.axhline(tau, color=col, ls="--", lw=1)
    ax.set_xlabel("age gap between the two images (years)")
    ax.set_ylabel("genuine cosine similarity")
    ax.set_title("Genuine score against age gap (dashed: tau)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:  # no genuine pair has two known ages
        ax.text(0.5, 0.5, "no genuine pairs with known ages", ha="center", transform=ax.transAxes)
    files = save_figure(fig, out, "genuine_vs_age_gap", formats)
    plt.close(fig)
    return files


def det(results: dict, out: Path, formats) -> dict:
    from scipy.special import ndtri  # the normal quantile (scipy.stats.norm.ppf)

    secs = _sections(results)
    if not secs:
        return {}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(secs), figsize=(4.6 * len(secs), 4.2), squeeze=False, layout="constrained")
    ticks = np.array([1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8])
    for c, (name, sec) in enumerate(secs):
        ax = axes[0][c]
        for k, (lab, cv) in enumerate(sec["curves"].items()):
            fmr, fnmr = np.asarray(cv["fmr"], float), np.asarray(cv["fnmr"], float)
            ok = (fmr > 0) & (fmr < 1) & (fnmr > 0) & (fnmr < 1)
            if ok.sum() < 2:
                continue
            ax.plot(ndtri(fmr[ok]), ndtri(fnmr[ok]), color="black" if lab == "overall" else
                    OKABE_ITO[(k - 1) % len(OKABE_ITO)], lw=2 if lab == "overall" else 1.3,
                    ls="--" if lab == "overall" else "-", label=lab)
        ax.set_xticks(ndtri(ticks), [f"{t:g}" for t in ticks], rotation=45)
        ax.set_yticks(ndtri(ticks), [f"{t:g}" for t in ticks])
        ax.set_xlim(ndtri(5e-6), ndtri(0.9))
        ax.set_ylim(ndtri(5e-4), ndtri(0.95))
        ax.set_xlabel("false match rate (FMR)")
        ax.set_ylabel("false non-match rate (FNMR)")
        ax.set_title(f"DET by age group: {name}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no points with 0 < FMR < 1 and 0 < FNMR < 1\n(too few pairs or errors to draw)",
                    ha="center", transform=ax.transAxes)
    files = save_figure(fig, out, "det", formats)
    plt.close(fig)
    return files


def fairness_vs_fmr(results: dict, out: Path, formats) -> dict:
    secs = _sections(results)
    if not secs:
        return {}
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    for k, (name, sec) in enumerate(secs):
        cv = sec.get("fairness_vs_fmr") or []
        x = np.array([p["target_fmr"] for p in cv], float)
        col = OKABE_ITO[k % len(OKABE_ITO)]
        for ax, key in ((a1, "garbe"), (a2, "fdr")):
            y = np.array([np.nan if p[key] is None else p[key] for p in cv], float)
            ax.plot(x, y, marker="o", ms=3, color=col, label=name)
    a1.set_title("GARBE (0 = fair) against target FMR")
    a2.set_title("FDR (1 = fair) against target FMR")
    for ax, yl in ((a1, "GARBE"), (a2, "FDR")):
        ax.set_xscale("log")
        ax.set_xlabel("target FMR (global threshold)")
        ax.set_ylabel(yl)
        ax.legend(fontsize=7)
    files = save_figure(fig, out, "fairness_vs_fmr", formats)
    plt.close(fig)
    return files


def group_rates(results: dict, out: Path, formats) -> dict:
    secs = _sections(results)
    if not secs:
        return {}
    plt = pyplot()
    labels = secs[0][1]["pair_grouping"]["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    width = 0.8 / max(len(secs), 1)
    x = np.arange(len(labels))
    for k, (name, sec) in enumerate(secs):
        col = OKABE_ITO[k % len(OKABE_ITO)]
        for ax, key in zip(axes, ("fmr", "fnmr")):
            v = np.array([np.nan if sec["groups"][g][key] is None else sec["groups"][g][key] for g in labels], float)
            ci = np.array([[np.nan if c is None else c for c in (sec["groups"][g][f"{key}_ci"] or [None, None])]
                           for g in labels], float)
            err = np.vstack([np.clip(v - ci[:, 0], 0, None), np.clip(ci[:, 1] - v, 0, None)])
            tau = sec["overall"].get("threshold")
            ax.bar(x + (k - (len(secs) - 1) / 2) * width, np.nan_to_num(v), width, yerr=np.nan_to_num(err),
                   color=col, capsize=3, label=f"{name} (tau = {tau:.3f})" if tau is not None else name)
    for ax, key in zip(axes, ("FMR", "FNMR")):
        ax.set_xticks(x, labels)
        ax.set_xlabel("age group")
        ax.set_ylabel(key)
        ax.set_title(f"{key} per age group at the global threshold (95 % CI)")
        ax.legend(fontsize=7)
    files = save_figure(fig, out, "group_rates", formats)
    plt.close(fig)
    return files


def impostor_heatmap(results: dict, out: Path, formats) -> dict:
    """NIST-style group x group FMR at the global threshold (both-images grouping only)."""
    secs = [(n, s) for n, s in _sections(results) if s.get("impostor_table")]
    if not secs:
        return {}
    plt = pyplot()
    labels = secs[0][1]["pair_grouping"]["labels"]
    fig, axes = plt.subplots(1, len(secs), figsize=(5.2 * len(secs), 4.0), squeeze=False, layout="constrained")
    for c, (name, sec) in enumerate(secs):
        ax = axes[0][c]
        m = np.full((len(labels), len(labels)), np.nan)
        for cell in sec["impostor_table"].values():
            i, j = labels.index(cell["row"]), labels.index(cell["col"])
            v = cell["fmr"]
            m[i, j] = m[j, i] = np.nan if v is None else v
        shown = np.log10(np.where(m > 0, m, np.nan))
        im = ax.imshow(shown, cmap="cividis")
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, "n/a" if not np.isfinite(m[i, j]) else f"{m[i, j]:.1e}", ha="center", va="center",
                        fontsize=7, color="white" if np.isfinite(shown[i, j]) and shown[i, j] < np.nanmean(shown)
                        else "black")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("age group of one image")
        ax.set_ylabel("age group of the other image")
        ax.grid(False)
        ax.set_title(f"Impostor FMR by age-group pair: {name}")
        fig.colorbar(im, ax=ax, label="log10 FMR")
    files = save_figure(fig, out, "impostor_heatmap", formats)
    plt.close(fig)
    return files


FIGURES: dict[str, tuple[str, FigureFunction]] = {
    "score_distributions": ("Score distributions by age group", score_distributions),
    "genuine_vs_age_gap": ("Genuine score against age gap", genuine_vs_age_gap),
    "det": ("DET curves by age group", det),
    "fairness_vs_fmr": ("GARBE and FDR against target FMR", fairness_vs_fmr),
    "group_rates": ("FMR and FNMR per age group", group_rates),
    "impostor_heatmap": ("Impostor FMR by age-group pair (at the global threshold)", impostor_heatmap),
}

PROTOCOL_FIGURES: dict[str, dict[str, tuple[str, FigureFunction]]] = {"all-pairs": FIGURES, "msc": msc.FIGURES}


def protocol_figures(results: dict) -> dict[str, tuple[str, FigureFunction]]:
    """The figures of the protocol that produced ``results`` (``settings.protocol``; all-pairs when absent)."""
    return PROTOCOL_FIGURES.get((results.get("settings") or {}).get("protocol") or "all-pairs", FIGURES)


def figure_title(results: dict, stem: str) -> str:
    """The caption of figure ``stem`` in the reports (the stem itself for a figure no protocol names)."""
    return protocol_figures(results).get(stem, (stem,))[0]


def make_plots(results: dict, out: Path, formats: Sequence[str] = ("png",)) -> dict[str, dict]:
    """Every figure of the results' protocol: ``{stem: {format: path}}``; figures with nothing to draw left out."""
    drawn = {stem: fn(results, out, formats) for stem, (_, fn) in protocol_figures(results).items()}
    return {k: v for k, v in drawn.items() if v}
