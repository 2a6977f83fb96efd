"""The evaluation figures: ranges from the data, one colour scale for compared models, empty panels that say why,
and ``EvaluationResult.plot(kind)`` for every kind (the same drawing code as the report's files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agebias.data.records import FaceRecord
from agebias.errors import DataError, SettingsError
from agebias.evaluate.api import evaluate_records
from agebias.evaluate.plots import PLOT_KINDS, draw, make_plots, shared_fmr_scale
from agebias.evaluate.settings import EvalSettings

AGES = (4, 8, 15, 17, 30, 34)  # per subject: two images in each of 0-12, 13-19 and 20-39


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def result():
    """Two models on the same 72 images: 'wide' with scores spread over [-0.5, 1], 'tight' with every score near
    0.97 (as the demo's fine-tuned model), the case whose figure sat on a fixed -0.5 .. 1 axis."""
    rng = np.random.default_rng(0)
    n_subj, dim = 12, 32
    subjects = np.repeat(np.arange(n_subj), len(AGES))
    base = rng.standard_normal((n_subj, dim))
    wide = _unit(base[subjects] + 0.7 * rng.standard_normal((subjects.size, dim)))
    common = rng.standard_normal(dim)
    tight = _unit(7 * common + base[subjects] + 0.3 * rng.standard_normal((subjects.size, dim)))
    records = [FaceRecord(path=Path(f"s{s}_{k}.png"), subject=f"s{s}", age=AGES[k % len(AGES)])
               for k, s in enumerate(subjects)]
    settings = EvalSettings(bootstrap=0, identification="off", age_bins="0-12,13-19,20-39", target_fmr=0.01)
    return evaluate_records(records, {"wide": wide, "tight": tight}, settings)


def _scores(res, model: str) -> np.ndarray:
    """Every score bin that holds a pair of this model (bin lower edges)."""
    h = res.to_dict()["models"][model]["histograms"]
    d = h["groups"]["overall"]
    used = np.flatnonzero(np.asarray(d["genuine"]) + np.asarray(d["impostor"]))
    return np.asarray(h["edges"])[used]


def test_score_axes_follow_the_data(result):
    fig = result.plot("scores")
    axes = np.asarray(fig.axes).reshape(4, 2)  # rows: overall + 3 age groups; columns: wide, tight
    for col, model in enumerate(("wide", "tight")):
        lo, hi = axes[0, col].get_xlim()
        edges = _scores(result, model)
        assert lo <= edges.min() and hi >= edges.max() + 0.01  # every score bin is inside
        assert axes[0, col].get_yscale() == "log"
    lo, hi = axes[0, 1].get_xlim()
    assert _scores(result, "tight").min() > 0.8 and lo > 0.75 and hi - lo < 0.3  # not the fixed -0.5 .. 1
    assert axes[0, 0].get_xlim()[0] < 0  # the wide model keeps its negative scores in view
    texts = [t.get_text() for ax in axes[:, 0] for t in ax.texts]
    assert any(t.startswith("overall: ") and "genuine" in t and "impostor" in t for t in texts)


def test_det_range_is_that_of_the_curves(result):
    from scipy.special import ndtri

    fig = result.plot("det")
    ax = fig.axes[0]
    x0, x1 = ax.get_xlim()
    sec = result.to_dict()["models"]["wide"]["curves"]["overall"]
    fmr, fnmr = np.asarray(sec["fmr"]), np.asarray(sec["fnmr"])
    ok = (fmr > 0) & (fmr < 1) & (fnmr > 0) & (fnmr < 1)
    assert x0 < ndtri(fmr[ok].min()) and x1 > ndtri(fmr[ok].max())
    assert x0 > ndtri(1e-6)  # no empty decades down to 5e-6 as the fixed axes had


def test_impostor_heatmaps_share_one_colour_scale(result):
    fig = result.plot("impostor_table")
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 2
    assert {(im.norm.vmin, im.norm.vmax) for im in images} == {(images[0].norm.vmin, images[0].norm.vmax)}
    colourbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colourbars) == 1
    fmrs = [c["fmr"] for m in ("wide", "tight") for c in result.to_dict()["models"][m]["impostor_table"].values()]
    positive = [v for v in fmrs if v]
    assert images[0].norm.vmin == pytest.approx(min(positive)) and images[0].norm.vmax == pytest.approx(max(positive))


def test_shared_scale_by_hand():
    a = np.array([[0.01, 0.0], [0.0, np.nan]])
    b = np.array([[0.002, 0.05], [0.05, 0.0]])
    assert shared_fmr_scale([a, b]) == (0.002, 0.05)
    assert shared_fmr_scale([np.array([[0.01]])]) == (0.005, 0.02)  # one value: a range around it
    assert shared_fmr_scale([np.zeros((2, 2))]) is None


def test_empty_garbe_panel_says_why_and_keeps_the_fdr_range():
    """GARBE undefined at every target FMR drew an empty panel with a 10^0 .. 10^1 axis and no word."""
    groups = {"0-12": 0.0, "13-19": 0.0}
    points = [{"target_fmr": t, "threshold": 0.5, "fmr": t, "garbe": None, "fdr": 1.0 - t,
               "group_fmr": {"0-12": t, "13-19": 2 * t}, "group_fnmr": dict(groups)} for t in (1e-4, 1e-3, 1e-2)]
    res = _fake_results(points)
    fig = draw(res, "fairness_vs_fmr")
    garbe_ax, fdr_ax = fig.axes[:2]
    assert not garbe_ax.get_lines() and fdr_ax.get_lines()
    assert garbe_ax.get_xlim() == pytest.approx(fdr_ax.get_xlim())
    assert garbe_ax.get_xlim()[0] < 1e-4 and garbe_ax.get_xlim()[1] > 1e-2
    note = " ".join(t.get_text() for t in garbe_ax.texts).replace("\n", " ")
    assert "GARBE is undefined at every target FMR" in note and "every age group has FNMR 0" in note


def test_empty_garbe_panel_counts_the_target_fmrs_each_reason_holds_at():
    """FNMR 0 everywhere, FMR 0 at the strictest target only: the note must not claim FMR 0 everywhere."""
    zero = {"0-12": 0.0, "13-19": 0.0}
    points = [{"target_fmr": t, "threshold": 0.5, "fmr": t, "garbe": None, "fdr": 1.0,
               "group_fmr": dict(zero) if t == 1e-4 else {"0-12": t, "13-19": 0.0}, "group_fnmr": dict(zero)}
              for t in (1e-4, 1e-3, 1e-2)]
    fig = draw(_fake_results(points), "fairness_vs_fmr")
    note = " ".join(t.get_text() for t in fig.axes[0].texts).replace("\n", " ")
    assert "every age group has FNMR 0 (no genuine pair is rejected);" in note
    assert "every age group has FMR 0 (no impostor pair is accepted), at 1 of the 3 target FMRs" in note


def _fake_results(points: list[dict]) -> dict:
    """A minimal all-pairs results dict (one model, two groups) around given fairness-vs-FMR points."""
    edges = np.linspace(-1, 1, 201).tolist()
    hist = {"genuine": [0] * 200, "impostor": [0] * 200}
    hist["genuine"][190], hist["impostor"][100] = 3, 5
    group = {"n_genuine": 3, "n_impostor": 5, "fmr": 0.0, "fnmr": 0.0, "fmr_ci": [0, 0.5], "fnmr_ci": [0, 0.6]}
    return {"settings": {"protocol": "all-pairs", "target_fmr": 0.01, "threshold": None}, "model_order": ["m"],
            "models": {"m": {"pair_grouping": {"labels": ["0-12", "13-19"], "description": "both"},
                             "overall": {"threshold": 0.5}, "groups": {"0-12": group, "13-19": group},
                             "histograms": {"edges": edges, "groups": {"overall": hist, "0-12": hist}},
                             "curves": {}, "fairness_vs_fmr": points}}}


def test_every_kind_is_a_figure_and_single_panels_take_an_ax(result, tmp_path):
    from matplotlib.figure import Figure

    for kind in PLOT_KINDS:
        assert isinstance(result.plot(kind), Figure), kind
    own = Figure()
    ax = own.subplots()
    assert result.plot("genuine_vs_gap", ax=ax) is own and ax.collections  # drawn into the caller's axes
    assert result["wide"].plot("det", ax=ax) is own  # one model: one DET panel
    with pytest.raises(SettingsError, match="draws 2 panels"):
        result.plot("rates", ax=ax)
    with pytest.raises(SettingsError, match="unknown plot kind 'pie'"):
        result.plot("pie")
    with pytest.raises(SettingsError, match="'impostor_table' for msc protocol results; choose from msc_columns"):
        draw({"settings": {"protocol": "msc"}, "model_order": ["m"], "models": {"m": {"protocol": "msc"}}},
             "impostor_table")
    with pytest.raises(DataError, match="no impostor_table figure: these all-pairs results have no group x group"):
        draw({"settings": {}, "model_order": ["m"], "models": {"m": {}}}, "impostor_table")
    files = make_plots(result.to_dict(), tmp_path, ["png"])  # the report's files come from the same drawings
    assert sorted(files) == sorted(PLOT_KINDS.values())
    assert all(Path(f["png"]).stat().st_size > 5000 for f in files.values())


def test_figures_fit_the_report_width_with_legible_fonts(result):
    """The HTML reports show figures at most 1168 px wide (9 inches at 130 dpi): wider ones shrink their text."""
    for kind in PLOT_KINDS:
        fig = result.plot(kind)
        assert fig.get_size_inches()[0] <= 9.0 + 1e-9, kind
        sizes = [t.get_fontsize() for ax in fig.axes for t in (*ax.get_xticklabels(), *ax.texts)]
        legends = [t.get_fontsize() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert min(sizes + legends) >= 6.5, kind


# ------------------------------------------------------------------------------- score panels: labels and limits
def _two_cluster_results(tau: float) -> dict:
    """One model, groups 'young' and 'old': impostor scores in two clusters (-0.5 and 0.3, an empty gap between
    them where a smoothed curve falls off the log axis) and genuine scores near 0.95; tau where a count label in
    the upper-left corner would cross it."""
    edges = np.linspace(-1, 1, 201)
    centres = (edges[1:] + edges[:-1]) / 2
    rng = np.random.default_rng(1)

    def hist(n_imp: int, n_gen: int) -> dict:
        imp = np.concatenate([rng.normal(-0.5, 0.03, n_imp // 2), rng.normal(0.3, 0.03, n_imp - n_imp // 2)])
        gen = rng.normal(0.95, 0.01, n_gen)
        return {"impostor": np.histogram(imp, edges)[0].tolist(), "genuine": np.histogram(gen, edges)[0].tolist()}

    young, old = hist(400, 60), hist(150, 20)
    overall = {k: (np.asarray(young[k]) + np.asarray(old[k])).tolist() for k in young}
    assert np.asarray(overall["impostor"])[(centres > -0.3) & (centres < 0.1)].sum() == 0  # the gap
    group = {"n_genuine": 1, "n_impostor": 1, "fmr": 0.0, "fnmr": 0.0}
    return {"settings": {"protocol": "all-pairs"}, "model_order": ["m"],
            "models": {"m": {"pair_grouping": {"labels": ["young", "old"], "description": "both"},
                             "overall": {"threshold": tau}, "groups": {"young": group, "old": group},
                             "histograms": {"edges": edges.tolist(),
                                            "groups": {"overall": overall, "young": young, "old": old}}}}}


def _drawn(fig):
    """The renderer of the figure drawn once on an Agg canvas (every artist, label frames too, in place)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _label_boxes(ax, renderer) -> list:
    """Display boxes of the panel's count labels, white frames included."""
    return [t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts]


def test_score_curves_stay_inside_their_axes_and_labels_clear_tau_and_data():
    """The upper-left label crossed tau (at 0.27 of the demo's sface range) and the smoothed impostor curve of
    the fine-tuned model ran below the axis through the gap between its score clusters."""
    from matplotlib.patches import StepPatch

    tau = -0.2  # at a quarter of the x range, in the gap between the impostor clusters
    fig = draw(_two_cluster_results(tau), "scores")
    renderer = _drawn(fig)
    axes = [a for a in fig.axes if a.texts]
    assert len(axes) == 3  # overall, young, old
    lo, hi = axes[0].get_ylim()
    tops = []
    for ax in axes:
        assert ax.get_ylim() == (lo, hi)  # one y axis for the column
        curves = [ln for ln in ax.get_lines() if ln.get_transform() == ax.transData]
        assert curves  # 200+ impostor pairs over 10+ bins: smoothed
        for ln in curves:
            y = np.asarray(ln.get_ydata(), float)
            y = y[np.isfinite(y)]
            assert y.size and lo <= y.min() and y.max() <= hi
        bars = [p.get_data().values for p in ax.patches if isinstance(p, StepPatch)]
        tops.append(max([b.max() for b in bars] + [np.nanmax(ln.get_ydata()) for ln in curves]))
        x_tau = ax.transData.transform((tau, 1.0))[0]
        data_top = ax.transData.transform((0.0, tops[-1]))[1]
        for box in _label_boxes(ax, renderer):
            assert not box.x0 <= x_tau <= box.x1  # clear of the tau line
            assert box.y0 > data_top  # above every bar and curve of the panel
            assert ax.get_window_extent(renderer).contains(box.x0, box.y0)
            assert ax.get_window_extent(renderer).contains(box.x1, box.y1)
    assert max(tops) < hi  # the shared top is above the highest density of every panel in the column


def test_a_label_with_no_room_beside_tau_stops_the_tau_line_below_it():
    """A panel too narrow for the label on either side of tau: three lines, and the tau line ends under them."""
    from matplotlib.figure import Figure

    from agebias.evaluate.plot_scores import _corner_label, _count_texts

    fig = Figure(figsize=(1.6, 2.0), dpi=130, layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(0, 1)
    tau_line = ax.axvline(0.5, color="black")
    fig.draw_without_rendering()
    texts = _count_texts("overall", {"genuine": 1234, "impostor": 56789})
    assert texts[-1] == "overall:\n1,234 genuine\n56,789 impostor"

    def make(text, side):
        return ax.text(0.02 if side == "left" else 0.98, 0.97, text, transform=ax.transAxes, ha=side, va="top",
                       fontsize=8, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})

    label, band = _corner_label(ax, make, texts, 0.5)
    assert list(ax.texts) == [label] and label.get_text() == texts[-1]
    renderer = _drawn(fig)
    box = label.get_bbox_patch().get_window_extent(renderer)
    line_top = ax.transAxes.transform((0.0, tau_line.get_ydata()[1]))[1]
    assert 0 < band < 1 and tau_line.get_ydata()[1] == pytest.approx(1 - band)
    assert line_top < box.y0  # the line ends below the label


def test_scores_in_the_callers_panel_put_counts_in_the_legend_clear_of_tau():
    """One panel drawn into a given ax: the legend (titled with the counts) had a fixed upper-right place."""
    from matplotlib.figure import Figure
    from matplotlib.patches import StepPatch

    res = _two_cluster_results(0.6)  # tau right of centre: the legend goes to the upper left
    res["models"]["m"]["histograms"]["groups"] = {"overall": res["models"]["m"]["histograms"]["groups"]["overall"]}
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    assert draw(res, "scores", ax=ax) is fig
    renderer = _drawn(fig)
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "overall: 80 genuine, 550 impostor" and not ax.texts
    box = legend.get_frame().get_window_extent(renderer)
    assert box.x1 < ax.transData.transform((0.6, 1.0))[0]  # left of tau
    peak = max(p.get_data().values.max() for p in ax.patches if isinstance(p, StepPatch))
    assert box.y0 > ax.transData.transform((0.0, peak))[1]  # above the highest bar
