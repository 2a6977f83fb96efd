"""The ``det`` figure (file ``det``): DET curves per age group on normal-deviate axes, one panel per model (one model:
drawn into a given ``ax``). The axis ranges are those of the curves (0.3 normal deviates of margin); a curve needs
2 points with 0 < FMR < 1 and 0 < FNMR < 1, and a panel with none says why.
"""

from __future__ import annotations

import numpy as np

from agebias.evaluate.figure_style import MAX_WIDTH, OKABE_ITO
from agebias.evaluate.plot_common import canvas, note, sections

GROUP_COLOURS = OKABE_ITO[:7]  # black is kept for "overall"
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


def draw_det(results: dict, ax=None):
    """The ``det`` figure of ``results`` (see the module notes); drawn into ``ax`` when it is given and the results
    hold one model."""
    from scipy.special import ndtri

    secs = sections(results)
    labels = secs[0][1]["pair_grouping"]["labels"]
    colours = {lab: GROUP_COLOURS[i % len(GROUP_COLOURS)] for i, lab in enumerate(labels)}
    n = len(secs)
    fig, axes = canvas(ax, "det", 1, n, 5.0 if n == 1 else min(MAX_WIDTH, 4.5 * n), 4.3, models=n, sharex=True,
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
            note(a, _det_reason(sec), fontsize=8)
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
