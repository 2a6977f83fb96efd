"""Figures drawn from results.json (never computing metrics). One drawing function per figure serves both
``EvaluationResult.plot(kind, ax=None)`` (:func:`draw` returns a matplotlib Figure) and the reports
(:func:`make_plots` saves the same figures under ``plots/``).

All-pairs figures, ``kind`` -> file stem (:data:`PLOT_KINDS`):

- ``scores`` -> ``score_distributions``: genuine and impostor score histograms, one row per age group and one column
  per model. Density is on a log axis, so a narrow genuine peak and a wide impostor spread are both visible; the
  model's tau and a smoothed density (over the scores' own range, for 100 pairs or more spread over 10 bins or
  more; the parts below the axis left out) are drawn over the bars; each model's x range is the range of its scores.
  Each panel's pair counts sit in an upper corner clear of tau (on two or three lines where one does not fit; where
  none fits, tau stops below them), and each model's shared density axis reaches above its highest bar or curve
  far enough that the labels stay clear of the data.
- ``genuine_vs_gap`` -> ``genuine_vs_age_gap``: genuine scores against the age gap of the pair, the mean per gap
  and each model's tau (one panel).
- ``det`` -> ``det``: DET curves per age group on normal-deviate axes, one panel per model; the axis ranges are
  those of the curves.
- ``fairness_vs_fmr`` -> ``fairness_vs_fmr``: GARBE and FDR against the target FMR of the global threshold; a panel
  with nothing defined says why.
- ``rates`` -> ``group_rates``: FMR and FNMR per age group at each model's global threshold with 95 % intervals.
- ``impostor_table`` -> ``impostor_heatmap``: age group x age group FMR (every pair grouping), one log colour
  scale shared by every model.

Kinds that draw one panel (``genuine_vs_gap``; ``det`` and ``impostor_table`` for one model) draw into a given
``ax``. The legacy ``msc`` protocol's figures (kinds ``msc_columns`` and ``msc_garbe`` of :func:`draw` for its
results) are in :mod:`agebias.evaluate.msc`; the shared look in :mod:`agebias.evaluate.figure_style`.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from agebias.errors import DataError, SettingsError
from agebias.evaluate import msc
from agebias.evaluate.figure_style import (GENUINE, IMPOSTOR, MAX_WIDTH, OKABE_ITO, new_figure, save_figure,
                                          smooth, style)

FigureFunction = Callable[[dict, Path, Sequence[str]], dict]

PLOT_KINDS: dict[str, str] = {
    "scores": "score_distributions",
    "genuine_vs_gap": "genuine_vs_age_gap",
    "det": "det",
    "fairness_vs_fmr": "fairness_vs_fmr",
    "rates": "group_rates",
    "impostor_table": "impostor_heatmap",
}
"""Plot kinds of :func:`draw` -> the file stem :func:`make_plots` writes for them."""

TITLES = {
    "scores": "Score distributions by age group",
    "genuine_vs_gap": "Genuine score against age gap",
    "det": "DET curves by age group",
    "fairness_vs_fmr": "GARBE and FDR against target FMR",
    "rates": "FMR and FNMR per age group",
    "impostor_table": "Impostor FMR by age-group pair (at the global threshold)",
}
GROUP_COLOURS = OKABE_ITO[:7]  # black is kept for "overall"


# ----------------------------------------------------------------------------------------------------- helpers
def _sections(results: dict, kind: str = "") -> list[tuple[str, dict]]:
    """The models with all-pairs group results and histograms, in the results' order (``impostor_table``: those
    with a group x group table)."""
    secs = [(m, results["models"][m]) for m in results["model_order"] if "groups" in results["models"][m]
            and "histograms" in results["models"][m]]
    if kind == "impostor_table":
        secs = [(m, s) for m, s in secs if s.get("impostor_table")]
    return secs


def _canvas(ax, kind: str, nrows: int, ncols: int, width: float, height: float, models: int = 1, **kw):
    """(figure, 2-D array of axes): a new figure, or the caller's ``ax`` when the figure has one panel
    (``models``: how many models the panels show, one column each, or 1 when the panels are not per model)."""
    if ax is None:
        fig = new_figure(width, height)
        return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)
    if nrows * ncols != 1:
        hint = " or pick one model with result[name]" if models > 1 else ""
        raise SettingsError(f"plot kind '{kind}' draws {nrows * ncols} panels for these results; call it without "
                            f"ax{hint}")
    return ax.figure, np.array([[ax]])


def _tau(sec: dict) -> float | None:
    tau = sec.get("overall", {}).get("threshold")
    return tau if tau is not None and math.isfinite(tau) else None


def _model_label(name: str, sec: dict) -> str:
    tau = _tau(sec)
    return f"{name} (tau = {tau:.3f})" if tau is not None else name


def _values(d: dict, labels: Sequence[str], key: str) -> np.ndarray:
    return np.array([np.nan if d[g].get(key) is None else d[g][key] for g in labels], float)


def _note(ax, text: str, **kw) -> None:
    """A grey explanation in the middle of an (empty) panel, its lines wrapped to fit a half-width panel."""
    import textwrap

    lines = [textwrap.fill(line, 56) for line in text.split("\n")]
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", transform=ax.transAxes, color="#444444", **kw)


def _short(v: float) -> str:
    """``0.0104`` -> ``1.0e-2`` (a compact rate for table cells)."""
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


# ------------------------------------------------------------------------------------------- score histograms
def _pairs(sec: dict, label: str) -> int:
    d = sec["histograms"]["groups"].get(label)
    return 0 if d is None else int(sum(d["genuine"]) + sum(d["impostor"]))


def _score_range(sec: dict, labels: Sequence[str]) -> tuple[float, float]:
    """The x range of one model's column: every bin holding a score of the shown groups, one bin of margin, and
    its tau; at least 0.1 wide, within [-1, 1 + half a bin]."""
    h = sec["histograms"]
    edges = np.asarray(h["edges"], float)
    used = np.zeros(edges.size - 1, bool)
    for lab in labels:
        d = h["groups"].get(lab)
        if d is not None:
            used |= (np.asarray(d["genuine"]) + np.asarray(d["impostor"])) > 0
    width = edges[1] - edges[0]
    idx = np.flatnonzero(used)
    lo, hi = (edges[idx[0]] - width, edges[idx[-1] + 1] + width) if idx.size else (-1.0, 1.0)
    tau = _tau(sec)
    if tau is not None:
        lo, hi = min(lo, tau - width), max(hi, tau + width)
    if hi - lo < 0.1:
        mid = (hi + lo) / 2
        lo, hi = mid - 0.05, mid + 0.05
    return max(lo, -1.0), min(hi, 1.0 + width / 2)


def _density_floor(sec: dict, labels: Sequence[str]) -> float:
    """The bottom of one model's density axis: below the density of one pair in the largest histogram shown
    (histogram density = count / (total * bin width))."""
    h = sec["histograms"]
    width = h["edges"][1] - h["edges"][0]
    totals = [sum((h["groups"].get(lab) or {}).get(key, [])) for lab in labels for key in ("genuine", "impostor")]
    return 0.4 / (max(totals) * width) if max(totals, default=0) > 0 else 0.1


def _bandwidth_bins(cnt: np.ndarray, centres: np.ndarray) -> float:
    """Silverman's rule of thumb, 0.9 min(sd, IQR / 1.34) n^-1/5, for a histogram's smoothing, in bins, within
    [1.5, 12] (the IQR term narrows it for scores in separate clusters, which inflate the sd)."""
    width = centres[1] - centres[0]
    tot = cnt.sum()
    mean = (cnt * centres).sum() / tot
    sd = math.sqrt((cnt * (centres - mean) ** 2).sum() / tot)
    q1, q3 = centres[np.searchsorted(np.cumsum(cnt) / tot, [0.25, 0.75])]
    spread = max(min(sd, (q3 - q1) / 1.34), width)
    return min(max(0.9 * spread * tot ** -0.2 / width, 1.5), 12.0)


def _score_panel(ax, edges: np.ndarray, d: dict | None, label: str, tau: float | None,
                 floor: float) -> tuple[dict[str, int], float]:
    """One group's genuine and impostor densities (log axis, bars down to ``floor``), their smoothed densities
    (the parts above ``floor``) and tau; returns ``({kind: pairs}, the highest density drawn)``, 0 when empty."""
    width = edges[1] - edges[0]
    centres = (edges[1:] + edges[:-1]) / 2
    parts = []
    for key, colour in (("genuine", GENUINE), ("impostor", IMPOSTOR)):
        cnt = np.asarray(d[key], float) if d is not None else np.zeros(centres.size)
        if cnt.sum() > 0:
            parts.append((key, colour, cnt))
    ax.set_yscale("log")
    if not parts:
        _note(ax, f"{label}: no pairs")
        return {}, 0.0
    top = 0.0
    for _, colour, cnt in parts:
        tot = cnt.sum()
        dens = cnt / (tot * width)
        ax.stairs(dens, edges, fill=True, color=colour, alpha=0.35, baseline=floor)
        top = max(top, dens.max())
        used = np.flatnonzero(cnt)
        if tot >= 100 and used[-1] - used[0] >= 10:  # smoothed: only over the scores' own range, not for a few
            span = slice(used[0], used[-1] + 1)
            curve = smooth(dens, _bandwidth_bins(cnt, centres))[span]
            curve[curve < floor] = np.nan  # below the axis: left out rather than drawn past its bottom
            ax.plot(centres[span], curve, color=colour, lw=1.2)
            top = max(top, np.nanmax(curve, initial=0.0))
    if tau is not None:
        ax.axvline(tau, color="black", ls="--", lw=1)
    return {key: int(cnt.sum()) for key, _, cnt in parts}, top


def _count_texts(label: str, counts: dict[str, int]) -> list[str]:
    """A panel's pair counts on one, two and three lines (the narrower forms for panels where tau leaves less
    room)."""
    parts = [f"{counts[k]:,} {k}" for k in ("genuine", "impostor") if k in counts]
    return [f"{label}: {', '.join(parts)}", f"{label}:\n{', '.join(parts)}", "\n".join([f"{label}:", *parts])]


def _count_label(ax, text: str, side: str, handles: list | None = None):
    """The count label in the upper ``side`` ('left' or 'right') corner of ``ax``: a framed text, or with
    ``handles`` the legend titled by it (the caller's single panel, which has no figure legend)."""
    if handles is not None:
        return ax.legend(handles=handles, title=text, loc=f"upper {side}", alignment="left")
    label = ax.text(0.02 if side == "left" else 0.98, 0.97, text, transform=ax.transAxes, ha=side, va="top",
                    fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1.5})
    label.set_in_layout(False)  # a trial placement past the panel's side must not move the layout
    return label


_GAP_PX = 4.0  # display pixels kept between a corner label and tau, the panel's sides and the data below it


def _framed_extent(artist):
    """The display box of a Text or Legend with its frame (a text's bbox pad, a legend's border pad)."""
    from matplotlib.legend import Legend

    if isinstance(artist, Legend):
        pad_pt = artist.borderpad * artist.prop.get_size_in_points()
    else:
        patch = artist.get_bbox_patch()
        pad_pt = 0.0 if patch is None else patch.get_boxstyle().pad * artist.get_fontsize()
    return artist.get_window_extent().padded(pad_pt * artist.get_figure(root=True).dpi / 72)


def _corner_label(ax, make: Callable, texts: Sequence[str], tau: float | None) -> tuple[object, float]:
    """Put ``make(text, side)`` (a Text or Legend in the upper ``side`` corner, 'left' or 'right') where it lies
    inside the panel and clear of the tau line, trying the texts in order and the left corner first; returns the
    artist and the fraction of the panel's height it takes from the top (the caller keeps the data below it). When
    no form fits, the last text goes on the side with more room and the tau line stops below it. Needs the figure
    laid out."""
    box = ax.get_window_extent()
    x_tau = None if tau is None else ax.get_xaxis_transform().transform((tau, 0.0))[0]
    tau_lines = [ln for ln in ax.get_lines() if ln.get_transform() == ax.get_xaxis_transform()]
    for line in tau_lines:
        line.set_ydata([0.0, 1.0])

    def band(artist) -> float:
        return (box.y1 - _framed_extent(artist).y0 + _GAP_PX) / box.height

    for text in texts:
        for side in ("left", "right"):
            artist = make(text, side)
            ext = _framed_extent(artist)
            inside = ext.x0 >= box.x0 and ext.x1 <= box.x1
            if inside and (x_tau is None or not ext.x0 - _GAP_PX <= x_tau <= ext.x1 + _GAP_PX):
                return artist, band(artist)
            artist.remove()
    roomy = "left" if x_tau is None or x_tau - box.x0 >= box.x1 - x_tau else "right"
    artist = make(texts[-1], roomy)
    for line in tau_lines:
        line.set_ydata([0.0, 1.0 - band(artist)])
    return artist, band(artist)


def _column_top(floor: float, peak: float, band: float) -> float:
    """The top of a log density axis from ``floor`` on which ``peak`` lies below the top ``band`` (a fraction of
    the height, at most 0.6) and at least a factor 2 below the top (a decade above ``floor`` with nothing drawn)."""
    if peak <= floor:
        return floor * 10
    return max(2 * peak, floor * (peak / floor) ** (1 / (1 - min(band, 0.6))))


def _draw_scores(results: dict, ax=None):
    """Score histograms, one row per age group (with pairs) and one column per model; see the module notes."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    secs = _sections(results)
    groups = secs[0][1]["pair_grouping"]["labels"]
    rows = [lab for lab in ["overall", *groups] if any(_pairs(sec, lab) for _, sec in secs)] or ["overall"]
    ncols = len(secs)
    width = 5.8 if ncols == 1 else min(MAX_WIDTH, 4.6 * ncols)
    fig, axes = _canvas(ax, "scores", len(rows), ncols, width, 0.9 + 1.45 * len(rows), models=ncols,
                        sharex="col", sharey="col")
    handles = [Patch(color=GENUINE, alpha=0.5, label="genuine pairs"),
               Patch(color=IMPOSTOR, alpha=0.5, label="impostor pairs"),
               Line2D([], [], color="black", ls="--", lw=1, label="tau (global threshold)")]
    columns = []  # per model: floor, highest density drawn, tau, and each panel's axes and count texts
    for c, (name, sec) in enumerate(secs):
        edges = np.asarray(sec["histograms"]["edges"], float)
        floor, tau, panels, peak = _density_floor(sec, rows), _tau(sec), [], 0.0
        for r, lab in enumerate(rows):
            counts, top = _score_panel(axes[r][c], edges, sec["histograms"]["groups"].get(lab), lab, tau, floor)
            peak = max(peak, top)
            if counts:
                panels.append((axes[r][c], _count_texts(lab, counts)))
        columns.append((floor, peak, tau, panels))
        axes[0][c].set_ylim(floor, _column_top(floor, peak, 0.25))
        axes[0][c].set_xlim(*_score_range(sec, rows))
        axes[0][c].set_title(_model_label(name, sec))
        axes[-1][c].set_xlabel("cosine similarity")
    if ax is None:
        fig.suptitle("Genuine and impostor score distributions by age group")
        fig.supylabel("density (log scale)")
        fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    else:
        ax.set_ylabel("density (log scale)")

    placed = []
    for _ in range(2):  # the second pass measures again on the final y axes (their tick labels shift the layout)
        for artist in placed:
            artist.remove()
        fig.draw_without_rendering()
        placed = []
        for col, (floor, peak, tau, panels) in enumerate(columns):
            bands = [0.0]
            for a, texts in panels:
                make = partial(_count_label, a, handles=handles if ax is not None else None)
                artist, band = _corner_label(a, make, texts, tau)
                placed.append(artist)
                bands.append(band)
            axes[0][col].set_ylim(floor, _column_top(floor, peak, max(bands)))  # shared by the column
    return fig


# ---------------------------------------------------------------------------------------- genuine vs age gap
def _draw_genuine_vs_gap(results: dict, ax=None):
    from matplotlib.lines import Line2D

    secs = _sections(results)
    fig, axes = _canvas(ax, "genuine_vs_gap", 1, 1, 6.4, 4.2)
    a = axes[0][0]
    handles = []
    for k, (name, sec) in enumerate(secs):
        d = sec.get("genuine_vs_gap") or {}
        gap, score = np.asarray(d.get("age_gap", []), float), np.asarray(d.get("score", []), float)
        if gap.size == 0:
            continue
        col = OKABE_ITO[k % len(OKABE_ITO)]
        a.scatter(gap + (k - (len(secs) - 1) / 2) * 0.25, score, s=9, alpha=0.4, color=col, linewidths=0)
        ug = np.unique(gap)
        a.plot(ug, [score[gap == g].mean() for g in ug], color=col, lw=1.6)
        tau = _tau(sec)
        if tau is not None:
            a.axhline(tau, color=col, ls="--", lw=1)
        handles.append(Line2D([], [], color=col, marker="o", ms=4, label=_model_label(name, sec)))
    a.set_xlabel("age gap between the two images (years)")
    a.set_ylabel("genuine cosine similarity")
    a.set_title("Genuine score against age gap (dots: pairs, line: mean per gap, dashed: tau)", fontsize=9)
    if handles:
        a.legend(handles=handles, loc="best")
    else:  # no genuine pair has two known ages
        _note(a, "no genuine pairs with known ages")
    return fig


# ------------------------------------------------------------------------------------------------------ DET
DECADES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.9, 0.99)
FINE_TICKS = (2e-4, 5e-4, 2e-3, 5e-3, 0.02, 0.05, 0.2, 0.3, 0.4, 0.7, 0.8, 0.95)


def _det_reason(sec: dict) -> str:
    """Why a model's DET panel is empty."""
    cv = sec["curves"].get("overall") or {}
    fmr, fnmr = np.asarray(cv.get("fmr", []), float), np.asarray(cv.get("fnmr", []), float)
    if fmr.size and np.all(fnmr[fmr > 0] == 0):
        return ("FNMR is 0 wherever FMR > 0: every genuine score is above\nthe impostor scores, and DET axes "
                "(normal deviates)\ncannot show a rate of 0")
    return "fewer than 2 points with 0 < FMR < 1 and 0 < FNMR < 1\n(too few pairs or errors to draw)"


def _det_ticks(ax, lo: float, hi: float, axis: str) -> None:
    from scipy.special import ndtri  # the normal quantile (scipy.stats.norm.ppf)

    ticks = [t for t in DECADES if lo <= ndtri(t) <= hi]
    if len(ticks) < 5:  # a short range: 2 and 5 times the decades too
        ticks = sorted(ticks + [t for t in FINE_TICKS if lo <= ndtri(t) <= hi])
    pos = ndtri(np.asarray(ticks, float)) if ticks else []
    (ax.set_xticks if axis == "x" else ax.set_yticks)(pos, [f"{t:g}" for t in ticks])


def _draw_det(results: dict, ax=None):
    from scipy.special import ndtri

    secs = _sections(results)
    labels = secs[0][1]["pair_grouping"]["labels"]
    colours = {lab: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, lab in enumerate(labels)}
    n = len(secs)
    fig, axes = _canvas(ax, "det", 1, n, 5.0 if n == 1 else min(MAX_WIDTH, 4.5 * n), 4.3, models=n, sharex=True,
                        sharey=True)
    xs, ys = [], []
    for c, (name, sec) in enumerate(secs):
        a = axes[0][c]
        left_out = []
        for lab, cv in sec["curves"].items():
            fmr, fnmr = np.asarray(cv["fmr"], float), np.asarray(cv["fnmr"], float)
            ok = (fmr > 0) & (fmr < 1) & (fnmr > 0) & (fnmr < 1)
            if ok.sum() < 2:
                left_out.append(lab)
                continue
            xs.append(ndtri(fmr[ok]))
            ys.append(ndtri(fnmr[ok]))
            overall = lab == "overall"
            a.plot(xs[-1], ys[-1], color="black" if overall else colours.get(lab, "grey"), lw=2 if overall else 1.4,
                   ls="--" if overall else "-", label=lab)
        a.set_title(f"DET by age group: {name}")
        a.set_xlabel("false match rate (FMR)")
        if c == 0:
            a.set_ylabel("false non-match rate (FNMR)")
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="upper right")
            if left_out:
                a.text(0.02, 0.02, "not drawn (fewer than 2 points with errors): " + ", ".join(left_out),
                       transform=a.transAxes, fontsize=7, color="#444444", va="bottom")
        else:
            _note(a, _det_reason(sec), fontsize=8)
    x = np.concatenate(xs) if xs else ndtri(np.array([1e-4, 0.5]))
    y = np.concatenate(ys) if ys else ndtri(np.array([1e-3, 0.5]))
    (x0, x1), (y0, y1) = (x.min() - 0.3, x.max() + 0.3), (y.min() - 0.3, y.max() + 0.3)
    for a in axes[0]:
        a.set_xlim(x0, x1)
        a.set_ylim(y0, y1)
        _det_ticks(a, x0, x1, "x")
        _det_ticks(a, y0, y1, "y")
        a.tick_params(axis="x", labelrotation=45)
    return fig


# --------------------------------------------------------------------------------------- fairness vs FMR
def _undefined_reason(models: list[tuple[str, list[dict]]], key: str) -> str:
    """Why GARBE (or FDR) is undefined at every target FMR, read from each model's per-group rates at its points
    (``models``: (name, fairness_vs_fmr points)); a reason that does not hold at every point says where it does."""
    held: dict[str, dict[str, int]] = {}
    for name, points in models:
        for p in points:
            fmr = [v for v in (p.get("group_fmr") or {}).values() if v is not None and math.isfinite(v)]
            fnmr = [v for v in (p.get("group_fnmr") or {}).values() if v is not None and math.isfinite(v)]
            reasons = [f"fewer than 2 age groups have {kind} pairs"
                       for rates, kind in ((fnmr, "genuine"), (fmr, "impostor")) if len(rates) < 2]
            if len(fmr) >= 2 and len(fnmr) >= 2 and key == "garbe":
                if not any(fnmr):
                    reasons.append("every age group has FNMR 0 (no genuine pair is rejected)")
                if not any(fmr):
                    reasons.append("every age group has FMR 0 (no impostor pair is accepted)")
            for r in reasons:
                held.setdefault(r, {})
                held[r][name] = held[r].get(name, 0) + 1
    if not held:
        return f"{key.upper()} has no value at any target FMR"
    n = {name: len(points) for name, points in models}

    def where(counts: dict[str, int]) -> str:
        if all(counts.get(m, 0) == k for m, k in n.items()):
            return ""
        if len(n) == 1:
            return f", at {counts.get(next(iter(n)), 0)} of the {next(iter(n.values()))} target FMRs"
        if len(set(n.values())) == 1:
            return (", at " + " and ".join(f"{counts.get(m, 0)} ({m})" for m in n)
                    + f" of the {next(iter(n.values()))} target FMRs")
        return ", at " + " and ".join(f"{counts.get(m, 0)} of {k} ({m})" for m, k in n.items()) + " target FMRs"

    why = ";\n".join(r + where(c) for r, c in held.items())
    zero = ".\nA Gini coefficient of rates that are all 0 is 0/0." if "has F" in why else ""
    return f"{key.upper()} is undefined at every target FMR:\n{why}{zero}"


def _draw_fairness(results: dict, ax=None):
    secs = _sections(results)
    fig, axes = _canvas(ax, "fairness_vs_fmr", 1, 2, MAX_WIDTH, 3.7, sharex=True)
    panels = (("garbe", "GARBE (0 = fair)", 0.0), ("fdr", "FDR (1 = fair)", 1.0))
    targets = []
    for k, (name, sec) in enumerate(secs):
        points = sec.get("fairness_vs_fmr") or []
        x = np.array([p["target_fmr"] for p in points], float)
        targets += x.tolist()
        for a, (key, _, _) in zip(axes[0], panels, strict=True):
            y = np.array([np.nan if p.get(key) is None else p[key] for p in points], float)
            if np.isfinite(y).any():
                a.plot(x, y, marker="o", ms=3.5, color=OKABE_ITO[k % len(OKABE_ITO)], label=name)
    for a, (key, title, fair) in zip(axes[0], panels, strict=True):
        a.set_xscale("log")
        a.set_title(f"{title} against target FMR")
        a.set_xlabel("target FMR of the global threshold")
        a.set_ylabel(title.split(" ")[0])
        if targets:
            a.set_xlim(min(targets) / 1.6, max(targets) * 1.6)
        if a.get_legend_handles_labels()[0]:
            a.axhline(fair, color="#888888", lw=0.8, zorder=0)
            a.legend(loc="best")
        else:
            a.set_yticks([])
            _note(a, _undefined_reason([(name, sec.get("fairness_vs_fmr") or []) for name, sec in secs], key),
                  fontsize=8)
    return fig


# ------------------------------------------------------------------------------------------- per-group rates
def _draw_rates(results: dict, ax=None):
    secs = _sections(results)
    labels = secs[0][1]["pair_grouping"]["labels"]
    fig, axes = _canvas(ax, "rates", 1, 2, MAX_WIDTH, 3.7)
    x = np.arange(len(labels))
    step = min(0.8 / max(len(secs), 1), 0.25)
    target = (results.get("settings") or {}).get("target_fmr")
    fixed = (results.get("settings") or {}).get("threshold") is not None
    for a, key in zip(axes[0], ("fmr", "fnmr"), strict=True):
        top, defined, missing = 0.0, False, []
        for k, (name, sec) in enumerate(secs):
            col = OKABE_ITO[k % len(OKABE_ITO)]
            v = _values(sec["groups"], labels, key)
            ci = np.array([[np.nan if c is None else c for c in (sec["groups"][g].get(f"{key}_ci") or [None, None])]
                           for g in labels], float)
            err = np.vstack([np.clip(v - ci[:, 0], 0, None), np.clip(ci[:, 1] - v, 0, None)])
            pos = x + (k - (len(secs) - 1) / 2) * step
            a.errorbar(pos, v, yerr=np.nan_to_num(err), fmt="o", ms=5, capsize=3, color=col,
                       label=_model_label(name, sec))
            missing += [(p, col) for p in pos[~np.isfinite(v)]]
            top = max(top, np.nanmax(np.r_[v, ci[:, 1], 0.0]))
            defined = defined or bool(np.isfinite(v).any())
        if key == "fmr" and target is not None and not fixed:
            a.axhline(target, color="#888888", ls=":", lw=1, label=f"target FMR {target:g}")
            top = max(top, target)
        name = key.upper()
        if not defined:
            kind = "impostor" if key == "fmr" else "genuine"
            how = secs[0][1]["pair_grouping"].get("description", "")
            _note(a, f"{name} is undefined in every age group: no group has {kind} pairs ({how})", fontsize=8)
        for p, col in missing if defined else []:
            a.text(p, 0, "n/a", ha="center", va="bottom", fontsize=7, color=col, rotation=90)
        a.set_xticks(x, labels)
        a.set_xlim(-0.5, len(labels) - 0.5)
        top = top * 1.12 if top > 0 else 0.05
        a.set_ylim(-0.03 * top, top)  # a little below 0, so rates of 0 show
        a.grid(False, axis="x")
        a.set_xlabel("age group")
        a.set_ylabel(f"{name} (95 % CI)")
        a.set_title(f"{name} per age group at the global threshold")
    handles, names = axes[0][0].get_legend_handles_labels()
    if ax is None:
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4), frameon=False)
    return fig


# -------------------------------------------------------------------------------------- impostor heatmap
def _impostor_matrices(sec: dict, labels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FMR, false matches, impostor pairs) as symmetric group x group matrices (NaN: no such cell)."""
    m, fm, n = (np.full((len(labels), len(labels)), np.nan) for _ in range(3))
    for cell in sec["impostor_table"].values():
        i, j = labels.index(cell["row"]), labels.index(cell["col"])
        m[i, j] = m[j, i] = np.nan if cell.get("fmr") is None else cell["fmr"]
        fm[i, j] = fm[j, i] = cell.get("false_matches", np.nan)
        n[i, j] = n[j, i] = cell.get("n_impostor", np.nan)
    return m, fm, n


def shared_fmr_scale(mats: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """(vmin, vmax) of the one log colour scale of every model's impostor table: the smallest and largest positive
    FMR over all of them (None when no cell is positive)."""
    pos = np.concatenate([m[np.isfinite(m) & (m > 0)] for m in mats]) if mats else np.array([])
    if pos.size == 0:
        return None
    lo, hi = float(pos.min()), float(pos.max())
    return (lo / 2, hi * 2) if lo == hi else (lo, hi)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Colour-bar ticks in [lo, hi]: 1, 2 and 5 times the decades (the ends when fewer than two fall inside)."""
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    return ticks if len(ticks) >= 2 else [lo, hi]


def _draw_impostor(results: dict, ax=None):
    import matplotlib
    from matplotlib.colors import LogNorm

    secs = _sections(results, "impostor_table")
    grouping = secs[0][1]["pair_grouping"]
    labels = grouping.get("cell_labels") or grouping["labels"]  # age groups (gap mode reports gap bins elsewhere)
    mats = [_impostor_matrices(sec, labels) for _, sec in secs]
    scale = shared_fmr_scale([m for m, _, _ in mats])
    norm = LogNorm(*scale) if scale else None
    cmap = matplotlib.colormaps["cividis"].with_extremes(bad="#e6e6e6")
    n = len(secs)
    fig, axes = _canvas(ax, "impostor_table", 1, n, min(MAX_WIDTH, 3.8 * n + 1.0), 3.9, models=n)
    small = len(labels) > 5
    image = None
    for c, ((name, _), (m, fm, npairs)) in enumerate(zip(secs, mats, strict=True)):
        a = axes[0][c]
        shown = np.where(m > 0, m, np.nan)
        image = a.imshow(shown, cmap=cmap, norm=norm)
        for i in range(len(labels)):
            for j in range(len(labels)):
                v = m[i, j]
                if not np.isfinite(v):
                    text, dark = "no pairs", False
                else:
                    count = "" if small or not np.isfinite(npairs[i, j]) else f"\n{int(fm[i, j])}/{int(npairs[i, j]):,}"
                    text = ("0" if v == 0 else _short(v)) + count
                    dark = v > 0 and norm is not None and sum(cmap(norm(v))[:3]) < 1.5
                a.text(j, i, text, ha="center", va="center", fontsize=6.5 if small else 8,
                       color="white" if dark else "black")
        a.set_xticks(range(len(labels)), labels)
        a.set_yticks(range(len(labels)), labels)
        a.set_xlabel("age group of one image")
        if c == 0:
            a.set_ylabel("age group of the other image")
        a.grid(False)
        a.set_title(name)
    if scale is not None and ax is None:
        bar = fig.colorbar(image, ax=list(axes[0]), label="impostor FMR (log scale; grey: 0 or no pairs)",
                           shrink=0.85)
        bar.set_ticks(_log_ticks(*scale), labels=[_short(t) for t in _log_ticks(*scale)])
        bar.minorticks_off()
    if ax is None:
        note = "" if scale else " (no false match in any cell)"
        fig.suptitle(f"Impostor FMR by age-group pair at the global threshold{note}")
    return fig


# ------------------------------------------------------------------------------------------------- public
_DRAW: dict[str, Callable] = {
    "scores": _draw_scores,
    "genuine_vs_gap": _draw_genuine_vs_gap,
    "det": _draw_det,
    "fairness_vs_fmr": _draw_fairness,
    "rates": _draw_rates,
    "impostor_table": _draw_impostor,
}


def can_draw(results: dict, kind: str) -> bool:
    """True when ``results`` hold what figure ``kind`` shows (all-pairs sections; a group x group table)."""
    return bool(_sections(results, kind))


def draw(results: dict, kind: str, ax=None):
    """The matplotlib Figure of ``kind`` (:data:`PLOT_KINDS`) for a results dict; single-panel figures draw into
    ``ax`` when given (its figure is returned). Raises :class:`SettingsError` for an unknown kind or an ``ax`` given
    to a figure of several panels, :class:`DataError` when the results lack what the figure shows."""
    protocol = (results.get("settings") or {}).get("protocol") or "all-pairs"
    if protocol == "msc":
        if kind not in msc.DRAW:
            raise SettingsError(f"unknown plot kind {kind!r} for msc protocol results; choose from "
                                f"{', '.join(msc.DRAW)}")
        if ax is not None:
            raise SettingsError(f"plot kind '{kind}' draws its own figure; call it without ax")
        with style():
            return msc.DRAW[kind](results)
    if kind not in _DRAW:
        raise SettingsError(f"unknown plot kind {kind!r}; choose from {', '.join(PLOT_KINDS)}")
    if not can_draw(results, kind):
        need = ("group x group impostor table (pair grouping 'both')" if kind == "impostor_table"
                else "score histograms and age-group results")
        raise DataError(f"no {kind} figure: these {protocol} results have no {need}")
    with style():
        return _DRAW[kind](results, ax)


def _file_figure(kind: str) -> FigureFunction:
    """The report's figure function of ``kind``: ``(results, out, formats) -> {format: path}`` (empty when the
    results have nothing to draw)."""
    def save(results: dict, out: Path, formats: Sequence[str]) -> dict:
        if not can_draw(results, kind):
            return {}
        return save_figure(draw(results, kind), out, PLOT_KINDS[kind], formats)

    save.__name__ = PLOT_KINDS[kind]
    save.__doc__ = f"Save the '{kind}' figure as ``out/{PLOT_KINDS[kind]}.<format>`` (see the module notes)."
    return save


FIGURES: dict[str, tuple[str, FigureFunction]] = {PLOT_KINDS[k]: (TITLES[k], _file_figure(k)) for k in PLOT_KINDS}

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
