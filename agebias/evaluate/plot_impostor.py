"""The ``impostor_table`` figure (file ``impostor_heatmap``): age group x age group FMR at the global threshold (every
pair grouping), one panel per model (one model: drawn into a given ``ax``) on one log colour scale shared by every
model; cells with an FMR of 0 or no pairs are grey.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from agebias.evaluate.figure_style import MAX_WIDTH
from agebias.evaluate.plot_common import canvas, sections


def _short(v: float) -> str:
    """``0.0104`` -> ``1.0e-2`` (a compact rate for table cells)."""
    mantissa, exponent = f"{v:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


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


def draw_impostor(results: dict, ax=None):
    """The ``impostor_table`` figure of ``results`` (see the module notes); drawn into ``ax`` when it is given and
    one model has a table."""
    import matplotlib
    from matplotlib.colors import LogNorm

    secs = sections(results, "impostor_table")
    grouping = secs[0][1]["pair_grouping"]
    labels = grouping.get("cell_labels") or grouping["labels"]  # age groups (gap mode reports gap bins elsewhere)
    mats = [_impostor_matrices(sec, labels) for _, sec in secs]
    scale = shared_fmr_scale([m for m, _, _ in mats])
    norm = LogNorm(*scale) if scale else None
    cmap = matplotlib.colormaps["cividis"].with_extremes(bad="#e6e6e6")
    n = len(secs)
    fig, axes = canvas(ax, "impostor_table", 1, n, min(MAX_WIDTH, 3.8 * n + 1.0), 3.9, models=n)
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
