"""The figure ``agebias search`` writes as ``pareto.png``: every completed trial on the first two objectives.

Conventions:

- Axes: objective 1 (x) and objective 2 (y), both minimised, so lower-left is better. The limits stay inside
  each metric's range (:data:`METRIC_RANGE`, in minimised form: EER, FNMR, GARBE and 1 - FDR in [0, 1], IR in
  [1, inf)); a value on a bound sits on the axis line, which is drawn a few points outside the plotting area so
  the marker shows whole. A value outside its range (a mistyped baseline) widens the axis to show it. With one
  objective the figure plots it against the trial number.
- Trials with equal plotted values share one marker and one label listing their numbers ("#0, #1, #3"; runs of
  three or more as "#4–7"). Labels go where they cover no marker, star or other label, inside the axes: the
  Pareto-front trials first, then the others from left to right; a label placed away from its marker gets a
  leader line. A dominated trial's label that finds no free place is left out, and the caption says how many.
- The Pareto front (over all objectives) in vermillion, joined by its staircase when there are exactly two
  objectives; the other completed trials in blue; the ``[baseline]`` as a black star, named in the legend.
- Title: the study name and how many trials are complete, failed and pruned (and running or waiting, if any).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from agebias.evaluate.figure_style import DPI, OKABE_ITO, new_figure, save_figure, style
from agebias.search.objectives import Objective

# the range of each metric's minimised value (Objective.minimised: FDR enters as 1 - FDR)
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "eer": (0.0, 1.0), "fnmr": (0.0, 1.0), "garbe": (0.0, 1.0), "fdr": (0.0, 1.0), "ir": (1.0, math.inf),
}
TRIAL_COLOUR, FRONT_COLOUR, BASELINE_COLOUR = OKABE_ITO[0], OKABE_ITO[3], OKABE_ITO[7]
TRIAL_AREA, FRONT_AREA, BASELINE_AREA = 30.0, 46.0, 170.0  # marker areas, points^2
SPINE_OFFSET = 6.0  # points between the plotting area and the left/bottom axis lines
LABEL_SIZE = 7.5
FRONT_TEXT, TRIAL_TEXT = "#8A3300", "0.2"  # label colours: a dark vermillion, a dark grey
CLEARANCE = 3.0  # pixels a label keeps from the markers of other trials
WIDTH, HEIGHT = 7.5, 4.8  # inches
# label offsets from the marker centre (points) with the text's alignment; tried at 1x, then 3x and 5x with a leader
NEAR = ((5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"), (-5, -3, "right", "top"),
        (0, 7, "center", "bottom"), (0, -7, "center", "top"))
CANDIDATES = [(dx * k, dy * k, ha, va, k > 1) for k in (1, 3, 5) for dx, dy, ha, va in NEAR]


@dataclass
class Spot:
    """One marker: the trials (numbers, ascending) with these plotted values."""

    x: float
    y: float
    numbers: list[int]
    on_front: bool


def completed_trials(trials: list, n_obj: int) -> list:
    """COMPLETE trials with all ``n_obj`` objective values."""
    return [t for t in trials if t.state.name == "COMPLETE" and t.values is not None and len(t.values) == n_obj]


def state_summary(trials: list) -> str:
    """``"6 trials: 4 complete, 1 failed, 1 pruned"`` (running and waiting added when there are any)."""
    counts = Counter(t.state.name for t in trials)
    words = [f"{counts['COMPLETE']} complete", f"{counts['FAIL']} failed", f"{counts['PRUNED']} pruned"]
    words += [f"{counts[s]} {s.lower()}" for s in ("RUNNING", "WAITING") if counts[s]]
    return f"{len(trials)} trial{'' if len(trials) == 1 else 's'}: " + ", ".join(words)


def trial_label(numbers: Sequence[int], per_line: int = 6) -> str:
    """``"#0, #1, #3"``; runs of three or more consecutive numbers as ``"#4–7"``; ``per_line`` items a line."""
    nums, parts, i = sorted(numbers), [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"#{nums[i]}–{nums[j]}")
            i = j + 1
        else:
            parts.append(f"#{nums[i]}")
            i += 1
    return ",\n".join(", ".join(parts[k:k + per_line]) for k in range(0, len(parts), per_line))


def axis_limits(values: Sequence[float], metric: str) -> tuple[float, float]:
    """Limits that show ``values`` with a margin of 8 % of their span, kept inside the metric's range; a single
    value gets a range of 20 % of its size (at least 0.04) around it, shifted inside the range at a bound."""
    lo, hi = METRIC_RANGE[metric]
    v = [float(x) for x in values if math.isfinite(x)]
    if not v:
        return lo, (hi if math.isfinite(hi) else lo + 1.0)
    vmin, vmax = min(v), max(v)
    if vmax > vmin:
        pad = 0.08 * (vmax - vmin)
        a, b = max(lo, vmin - pad), min(hi, vmax + pad)
    else:
        half = max(0.1 * abs(vmin), 0.02)
        a, b = max(lo, vmin - half), min(hi, vmin + half)
        if a == lo:
            b = min(hi, lo + 2 * half)
        elif b == hi:
            a = max(lo, hi - 2 * half)
    return min(a, vmin), max(b, vmax)


def coincident_spots(points: Sequence[tuple[float, float, int, bool]]) -> list[Spot]:
    """Group ``(x, y, number, on_front)`` points with equal values (to 12 decimals) and the same front status;
    spots ordered by their lowest trial number."""
    spots: dict[tuple, Spot] = {}
    for x, y, number, on_front in sorted(points, key=lambda p: p[2]):
        key = (round(x, 12), round(y, 12), on_front)
        if key in spots:
            spots[key].numbers.append(number)
        else:
            spots[key] = Spot(x, y, [number], on_front)
    return list(spots.values())


def pareto_figure(trials: list, front: list, objectives: list[Objective], baseline: dict | None, title: str):
    """The figure (see the module docstring); ``front``: the non-dominated COMPLETE trials over all objectives,
    ``baseline``: ``{"label", "values": {objective name: minimised value}}`` or None."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.ticker import MaxNLocator

    with style():
        fig = new_figure(WIDTH, HEIGHT)
        fig.set_dpi(DPI)
        FigureCanvasAgg(fig)  # a renderer to measure the labels with
        ax = fig.add_subplot()
        ax.spines[["top", "right"]].set_visible(False)
        ax.spines[["left", "bottom"]].set_position(("outward", SPINE_OFFSET))
        done = completed_trials(trials, len(objectives))
        on_front = {t.number for t in front}
        notes = ["All objectives minimised (lower is better)."]
        spots = []
        if len(objectives) >= 2:
            spots = coincident_spots([(*_xy(t), t.number, t.number in on_front) for t in done])
            notes += _draw_two(ax, spots, objectives, baseline)
            if len(spots) == 1 and len(done) > 1:
                notes.append(f"All {len(done)} completed trials have the same values on both axes.")
        else:
            _draw_one(ax, done, on_front, objectives[0], baseline)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"{title}\n{state_summary(trials)}")
        if not done:
            ax.text(0.5, 0.5, "no completed trial yet", ha="center", va="center", transform=ax.transAxes)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.02), ncols=len(handles), frameon=False,
                      borderaxespad=0)
        if spots:
            notes += _label_spots(fig, ax, spots, _baseline_xy(objectives, baseline), notes)
        fig.supxlabel(" ".join(notes), fontsize=8, color="0.3")
    return fig


def _xy(t) -> tuple[float, float]:
    return float(t.values[0]), float(t.values[1])


def _baseline_xy(objectives: list[Objective], baseline: dict | None) -> tuple[float, float] | None:
    values = (baseline or {}).get("values", {})
    if all(o.name in values for o in objectives[:2]):
        return float(values[objectives[0].name]), float(values[objectives[1].name])
    return None


def _draw_two(ax, spots: list[Spot], objectives: list[Objective], baseline: dict | None) -> list[str]:
    """One marker per spot, the front's staircase, the baseline and the limits; returns caption notes."""
    notes = []
    for on_front in (False, True):
        mine = [s for s in spots if s.on_front == on_front]
        if not mine:
            continue
        n = sum(len(s.numbers) for s in mine)
        xy = sorted((s.x, s.y) for s in mine)
        if on_front and len(objectives) == 2 and len(xy) > 1:
            ax.step(*zip(*xy, strict=True), where="post", c=FRONT_COLOUR, lw=1.0, zorder=2)
        label = f"Pareto front ({n} trial{'' if n == 1 else 's'})" if on_front else f"dominated trials ({n})"
        ax.scatter(*zip(*xy, strict=True), s=FRONT_AREA if on_front else TRIAL_AREA,
                   c=FRONT_COLOUR if on_front else TRIAL_COLOUR, edgecolors="white", linewidths=0.6,
                   clip_on=False, zorder=4 if on_front else 3, label=label)
    if len(objectives) > 2:
        notes.append(f"Front over all {len(objectives)} objectives; the first two are shown.")
    bxy = _baseline_xy(objectives, baseline)
    if bxy is not None:
        ax.scatter([bxy[0]], [bxy[1]], marker="*", s=BASELINE_AREA, c=BASELINE_COLOUR, clip_on=False, zorder=5,
                   label=f"baseline: {baseline['label']}")
    pts = [(s.x, s.y) for s in spots] + ([bxy] if bxy is not None else [])
    for k, (o, setter) in enumerate(((objectives[0], ax.set_xlim), (objectives[1], ax.set_ylim))):
        setter(*axis_limits([p[k] for p in pts], o.metric))
    ax.set_xlabel(objectives[0].label)
    ax.set_ylabel(objectives[1].label)
    if spots:
        notes.append("Labels: trial numbers.")
    return notes


def _draw_one(ax, done: list, on_front: set[int], objective: Objective, baseline: dict | None) -> None:
    """The one-objective figure: the objective against the trial number, the best trial(s) in vermillion."""
    for best in (False, True):
        xy = [(t.number, t.values[0]) for t in done if (t.number in on_front) == best]
        if xy:
            ax.scatter(*zip(*xy, strict=True), s=FRONT_AREA if best else TRIAL_AREA,
                       c=FRONT_COLOUR if best else TRIAL_COLOUR, clip_on=False, zorder=4 if best else 3,
                       label=f"best ({len(xy)})" if best else f"trials ({len(xy)})")
    values = [t.values[0] for t in done]
    bval = (baseline or {}).get("values", {}).get(objective.name)
    if bval is not None:
        ax.axhline(float(bval), c=BASELINE_COLOUR, ls="--", lw=1, label=f"baseline: {baseline['label']}")
        values.append(float(bval))
    numbers = [t.number for t in done]
    ax.set_xlim(min(numbers, default=0) - 0.5, max(numbers, default=0) + 0.5)
    ax.set_ylim(*axis_limits(values, objective.metric))
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective.label)


def _label_spots(fig, ax, spots: list[Spot], baseline_xy: tuple[float, float] | None, notes: list[str]) -> list[str]:
    """Place one label per spot where it covers no marker and no earlier label and keeps clear of the other
    markers (module docstring); returns the caption note on labels left out, if any."""
    fig.supxlabel(" ".join(notes), fontsize=8, color="0.3")  # the caption's room, so the layout stays as drawn
    fig.canvas.draw()  # fixes the layout: the labels are placed in its display coordinates
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72.0

    def marker_box(x, y, area):
        r = math.sqrt(area) / 2 * px
        cx, cy = ax.transData.transform((x, y))
        return (cx - r, cy - r, cx + r, cy + r)

    markers = np.array([marker_box(s.x, s.y, FRONT_AREA if s.on_front else TRIAL_AREA) for s in spots]).reshape(-1, 4)
    others = markers + np.array([-CLEARANCE, -CLEARANCE, CLEARANCE, CLEARANCE])  # keep clear of other markers
    placed = [marker_box(*baseline_xy, BASELINE_AREA)] if baseline_xy is not None else []
    frame = ax.bbox.extents
    omitted = 0
    for i in sorted(range(len(spots)), key=lambda i: (not spots[i].on_front, spots[i].x, spots[i].y)):
        s = spots[i]
        colour = FRONT_TEXT if s.on_front else TRIAL_TEXT
        text = ax.annotate(trial_label(s.numbers), (s.x, s.y), xytext=(0, 0), textcoords="offset points",
                           fontsize=LABEL_SIZE)
        not_mine = np.arange(len(spots)) != i
        best = None
        for dx, dy, ha, va, leader in CANDIDATES:
            text.xyann = (dx, dy)
            text.set_horizontalalignment(ha)
            text.set_verticalalignment(va)
            box = text.get_window_extent(renderer).extents + np.array([-1, -1, 1, 1])
            cost = (_overlap(box, others[not_mine]) + _overlap(box, markers[i:i + 1]) + _overlap(box, placed)
                    + 10 * _outside(box, frame))
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ha, va, leader, tuple(box))
            if cost == 0:
                break
        text.remove()
        cost, dx, dy, ha, va, leader, box = best
        if cost > 0 and not s.on_front:
            omitted += len(s.numbers)
            continue
        arrow = {"arrowstyle": "-", "color": colour, "lw": 0.6, "shrinkA": 1, "shrinkB": 4} if leader else None
        label = ax.annotate(trial_label(s.numbers), (s.x, s.y), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, fontsize=LABEL_SIZE, color=colour, annotation_clip=False, zorder=6,
                            arrowprops=arrow,
                            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75})
        label.set_in_layout(False)
        placed.append(box)
    return [f"{omitted} dominated trial{'' if omitted == 1 else 's'} unlabelled (no room)."] if omitted else []


def _overlap(box, boxes: list) -> float:
    """Total area (px^2) that ``box`` shares with ``boxes`` (x0, y0, x1, y1 each)."""
    b = np.asarray(boxes, float).reshape(-1, 4)
    w = np.clip(np.minimum(box[2], b[:, 2]) - np.maximum(box[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], b[:, 3]) - np.maximum(box[1], b[:, 1]), 0, None)
    return float((w * h).sum())


def _outside(box, frame) -> float:
    """Area (px^2) of ``box`` outside ``frame`` (x0, y0, x1, y1)."""
    w, h = box[2] - box[0], box[3] - box[1]
    iw = max(0.0, min(box[2], frame[2]) - max(box[0], frame[0]))
    ih = max(0.0, min(box[3], frame[3]) - max(box[1], frame[1]))
    return float(w * h - iw * ih)


def plot_pareto(trials: list, front: list, objectives: list[Objective], baseline: dict | None, path: Path,
                title: str) -> None:
    """Write :func:`pareto_figure` to ``path`` (PNG, atomically, at the shared figure DPI, tight box)."""
    path = Path(path)
    with style():
        save_figure(pareto_figure(trials, front, objectives, baseline, title), path.parent, path.stem, ["png"])
