"""The ``rates`` figure (file ``group_rates``): FMR and FNMR per age group at each model's global threshold with 95 %
intervals, one panel per rate.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from agebias.evaluate.figure_style import MAX_WIDTH, OKABE_ITO
from agebias.evaluate.plot_common import canvas, model_label, note, sections


def _values(d: dict, labels: Sequence[str], key: str) -> np.ndarray:
    return np.array([np.nan if d[g].get(key) is None else d[g][key] for g in labels], float)


def draw_rates(results: dict, ax=None):
    """The ``rates`` figure of ``results`` (see the module notes; two panels, so ``ax`` is refused)."""
    secs = sections(results)
    labels = secs[0][1]["pair_grouping"]["labels"]
    fig, axes = canvas(ax, "rates", 1, 2, MAX_WIDTH, 3.7)
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
                       label=model_label(name, sec))
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
            note(a, f"{name} is undefined in every age group: no group has {kind} pairs ({how})", fontsize=8)
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
