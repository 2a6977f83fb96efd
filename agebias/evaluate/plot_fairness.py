"""The ``fairness_vs_fmr`` figure (file ``fairness_vs_fmr``): GARBE and FDR against the target FMR of the global
threshold, one line per model; a panel with nothing defined says why.
"""

from __future__ import annotations

import math

import numpy as np

from agebias.evaluate.figure_style import MAX_WIDTH, OKABE_ITO
from agebias.evaluate.plot_common import canvas, note, sections


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


def draw_fairness(results: dict, ax=None):
    """The ``fairness_vs_fmr`` figure of ``results`` (see the module notes; two panels, so ``ax`` is refused)."""
    secs = sections(results)
    fig, axes = canvas(ax, "fairness_vs_fmr", 1, 2, MAX_WIDTH, 3.7, sharex=True)
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
            note(a, _undefined_reason([(name, sec.get("fairness_vs_fmr") or []) for name, sec in secs], key),
                 fontsize=8)
    return fig
