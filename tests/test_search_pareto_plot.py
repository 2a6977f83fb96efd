"""The Pareto figure of `agebias search`: axis limits inside the objectives' ranges, coincident trials as one marker
with one combined label, every trial labelled without overlaps, trial states in the title, the baseline in the
legend."""

from __future__ import annotations

import random

import numpy as np
import optuna
import pytest
from matplotlib.text import Text

from agebias.search.objectives import METRICS, Objective
from agebias.search.pareto_plot import METRIC_RANGE, axis_limits, pareto_figure, plot_pareto, trial_label
from agebias.search.study import pareto_front

ERROR, FAIRNESS = Objective("error", "eer", "val"), Objective("fairness", "fdr", "val", fmr=0.1)


def trial(n, values, state="COMPLETE"):
    return optuna.trial.FrozenTrial(number=n, state=optuna.trial.TrialState[state], value=None, values=values,
                                    datetime_start=None, datetime_complete=None, params={}, distributions={},
                                    user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=n)


def figure(trials, objectives=(ERROR, FAIRNESS), baseline=None):
    objectives = list(objectives)
    return pareto_figure(trials, pareto_front(trials, len(objectives)), objectives, baseline, "study")


def labels(ax) -> list[str]:
    return sorted(t.get_text() for t in ax.texts if t.get_text().startswith("#"))


def marker_positions(ax) -> np.ndarray:
    return np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])


def test_every_metric_has_a_range():
    assert set(METRIC_RANGE) == set(METRICS)


@pytest.mark.parametrize("values, metric, expected", [
    ([0.0, 0.0], "eer", (0.0, 0.04)),      # one value on the lower bound: 0 to 2 x 0.02, never below 0
    ([0.1, 0.3], "fdr", (0.084, 0.316)),   # margin 8 % of the span on both sides
    ([0.0, 0.5], "fnmr", (0.0, 0.54)),     # the margin below 0 is cut at the bound
    ([1.0], "eer", (0.8, 1.0)),            # one value on the upper bound: the range is shifted down
    ([1.0], "ir", (1.0, 1.2)),             # IR >= 1
    ([], "garbe", (0.0, 1.0)),             # nothing to show: the whole range
    ([-0.1, 0.2], "eer", (-0.1, 0.224)),   # an impossible value (a mistyped baseline) is still shown
])
def test_axis_limits(values, metric, expected):
    assert axis_limits(values, metric) == pytest.approx(expected)


def test_trial_labels():
    assert trial_label([3, 0, 1]) == "#0, #1, #3"
    assert trial_label([7, 0, 1, 2, 3]) == "#0–3, #7"
    assert trial_label([0, 2, 4, 6], per_line=2) == "#0, #2,\n#4, #6"


def test_coincident_trials_at_zero_share_one_marker_and_one_label():
    """The reviewer's study: most trials score 0 on both objectives (the old figure showed EER -0.04 .. 0.04 and
    printed 0, 1, 3 on top of each other, with no label for the dominated trial)."""
    trials = [trial(0, [0.0, 0.0]), trial(1, [0.0, 0.0]), trial(2, [0.0, 0.125]), trial(3, [0.0, 0.0]),
              trial(4, None, "FAIL"), trial(5, None, "PRUNED")]
    fig = figure(trials, baseline={"label": "SFace", "values": {"error": 0.05, "fairness": 0.1}})
    ax = fig.axes[0]
    assert ax.get_xlim()[0] == 0.0 and ax.get_ylim()[0] == 0.0
    assert labels(ax) == ["#0, #1, #3", "#2"]
    pts = marker_positions(ax)
    assert ((pts[:, 0] == 0) & (pts[:, 1] == 0)).sum() == 1  # one marker for the three trials
    assert "6 trials: 4 complete, 1 failed, 1 pruned" in fig.get_suptitle()
    assert "baseline: SFace" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_all_trials_identical_and_one_trial():
    fig = figure([trial(n, [0.0, 0.0]) for n in range(5)])
    ax = fig.axes[0]
    assert labels(ax) == ["#0–4"] and ax.get_xlim() == (0.0, 0.04) and ax.get_ylim() == (0.0, 0.04)
    assert "All 5 completed trials have the same values on both axes" in fig.get_supxlabel()
    fig = figure([trial(0, [0.2, 0.3])])
    assert labels(fig.axes[0]) == ["#0"] and fig.axes[0].get_xlim() == pytest.approx((0.18, 0.22))


def test_many_trials_each_labelled_once_inside_the_axes_without_overlap():
    rng = random.Random(0)
    trials = [trial(n, [rng.uniform(0.05, 0.4), rng.uniform(0.0, 0.6)]) for n in range(25)]
    fig = figure(trials)
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in ax.texts if t.get_text().startswith("#")]
    assert sorted(int(t.get_text()[1:]) for t in texts) == list(range(25))
    boxes = []
    for t in texts:
        t.get_window_extent(renderer)  # positions the annotation; the text's own box below (without a leader)
        boxes.append(Text.get_window_extent(t))
    frame = ax.bbox
    for i, b in enumerate(boxes):
        assert frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
        assert not any(b.overlaps(o) for o in boxes[i + 1:])


def test_inequity_rate_axis_starts_at_one_and_one_objective_plots_against_trial_number(tmp_path):
    garbe, ir = Objective("garbe", "garbe", "val"), Objective("ir", "ir", "val")
    fig = figure([trial(0, [0.0, 1.0]), trial(1, [0.2, 1.0])], (garbe, ir))
    assert fig.axes[0].get_ylim() == (1.0, 1.2) and fig.axes[0].get_xlim()[0] == 0.0
    trials = [trial(0, [0.0]), trial(1, [0.1]), trial(2, None, "FAIL")]
    fig = figure(trials, (ERROR,), {"label": "ref", "values": {"error": 0.05}})
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0.0 and ax.get_xlim() == (-0.5, 1.5) and ax.get_xlabel() == "trial number"
    path = tmp_path / "pareto.png"
    plot_pareto(trials, pareto_front(trials, 1), [ERROR], None, path, "study")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
