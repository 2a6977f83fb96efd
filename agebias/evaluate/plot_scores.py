"""The ``scores`` figure (file ``score_distributions``): genuine and impostor score histograms, one row per age group
and one column per model.

Density is on a log axis, so a narrow genuine peak and a wide impostor spread are both visible; the model's tau and
a smoothed density (over the scores' own range, for 100 pairs or more spread over 10 bins or more; the parts below
the axis left out) are drawn over the bars; each model's x range is the range of its scores. Each panel's pair
counts sit in an upper corner clear of tau (on two or three lines where one does not fit; where none fits, tau stops
below them), and each model's shared density axis reaches above its highest bar or curve far enough that the labels
stay clear of the data. Drawn into the caller's ``ax`` (one model, one group with pairs), the counts title the
legend instead.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import numpy as np

from agebias.evaluate.figure_style import GENUINE, IMPOSTOR, MAX_WIDTH, smooth
from agebias.evaluate.plot_common import canvas, model_label, model_tau, note, sections


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
    tau = model_tau(sec)
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
        note(ax, f"{label}: no pairs")
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


def draw_scores(results: dict, ax=None):
    """Score histograms, one row per age group (with pairs) and one column per model; see the module notes."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    secs = sections(results)
    groups = secs[0][1]["pair_grouping"]["labels"]
    rows = [lab for lab in ["overall", *groups] if any(_pairs(sec, lab) for _, sec in secs)] or ["overall"]
    ncols = len(secs)
    width = 5.8 if ncols == 1 else min(MAX_WIDTH, 4.6 * ncols)
    fig, axes = canvas(ax, "scores", len(rows), ncols, width, 0.9 + 1.45 * len(rows), models=ncols,
                       sharex="col", sharey="col")
    handles = [Patch(color=GENUINE, alpha=0.5, label="genuine pairs"),
               Patch(color=IMPOSTOR, alpha=0.5, label="impostor pairs"),
               Line2D([], [], color="black", ls="--", lw=1, label="tau (global threshold)")]
    columns = []  # per model: floor, highest density drawn, tau, and each panel's axes and count texts
    for c, (name, sec) in enumerate(secs):
        edges = np.asarray(sec["histograms"]["edges"], float)
        floor, tau, panels, peak = _density_floor(sec, rows), model_tau(sec), [], 0.0
        for r, lab in enumerate(rows):
            counts, top = _score_panel(axes[r][c], edges, sec["histograms"]["groups"].get(lab), lab, tau, floor)
            peak = max(peak, top)
            if counts:
                panels.append((axes[r][c], _count_texts(lab, counts)))
        columns.append((floor, peak, tau, panels))
        axes[0][c].set_ylim(floor, _column_top(floor, peak, 0.25))
        axes[0][c].set_xlim(*_score_range(sec, rows))
        axes[0][c].set_title(model_label(name, sec))
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
