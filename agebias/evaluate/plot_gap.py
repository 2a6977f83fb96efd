"""The ``genuine_vs_gap`` figure (file ``genuine_vs_age_gap``): genuine scores against the age gap of the pair, the
mean per gap and each model's tau, in one panel (drawn into the caller's ``ax`` when one is given).
"""

from __future__ import annotations

import numpy as np

from agebias.evaluate.figure_style import OKABE_ITO
from agebias.evaluate.plot_common import canvas, model_label, model_tau, note, sections


def draw_genuine_vs_gap(results: dict, ax=None):
    """The ``genuine_vs_gap`` figure of ``results`` (see the module notes); drawn into ``ax`` when it is given."""
    from matplotlib.lines import Line2D

    secs = sections(results)
    fig, axes = canvas(ax, "genuine_vs_gap", 1, 1, 6.4, 4.2)
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
        tau = model_tau(sec)
        if tau is not None:
            a.axhline(tau, color=col, ls="--", lw=1)
        handles.append(Line2D([], [], color=col, marker="o", ms=4, label=model_label(name, sec)))
    a.set_xlabel("age gap between the two images (years)")
    a.set_ylabel("genuine cosine similarity")
    a.set_title("Genuine score against age gap (dots: pairs, line: mean per gap, dashed: tau)", fontsize=9)
    if handles:
        a.legend(handles=handles, loc="best")
    else:  # no genuine pair has two known ages
        note(a, "no genuine pairs with known ages")
    return fig
