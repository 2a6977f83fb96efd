"""Figures drawn from results.json (never computing metrics). One drawing function per figure serves both
``EvaluationResult.plot(kind, ax=None)`` (:func:`draw` returns a matplotlib Figure) and the reports
(:func:`make_plots` saves the same figures under ``plots/``).

All-pairs figures, ``kind`` -> file stem (:data:`PLOT_KINDS`), each drawn by its own module (whose notes give the
figure's conventions):

- ``scores`` -> ``score_distributions`` (:mod:`agebias.evaluate.plot_scores`): genuine and impostor score
  histograms, one row per age group and one column per model, pair counts in the panels' corners clear of tau.
- ``genuine_vs_gap`` -> ``genuine_vs_age_gap`` (:mod:`agebias.evaluate.plot_gap`): genuine scores against the age
  gap of the pair, the mean per gap and each model's tau (one panel).
- ``det`` -> ``det`` (:mod:`agebias.evaluate.plot_det`): DET curves per age group on normal-deviate axes, one panel
  per model.
- ``fairness_vs_fmr`` -> ``fairness_vs_fmr`` (:mod:`agebias.evaluate.plot_fairness`): GARBE and FDR against the
  target FMR of the global threshold.
- ``rates`` -> ``group_rates`` (:mod:`agebias.evaluate.plot_rates`): FMR and FNMR per age group at each model's
  global threshold with 95 % intervals.
- ``impostor_table`` -> ``impostor_heatmap`` (:mod:`agebias.evaluate.plot_impostor`): age group x age group FMR,
  one log colour scale shared by every model.

Kinds that draw one panel (``genuine_vs_gap``; ``det`` and ``impostor_table`` for one model) draw into a given
``ax``. The helpers these figures share are in :mod:`agebias.evaluate.plot_common`. The legacy ``msc`` protocol's
figures (kinds ``msc_columns`` and ``msc_garbe`` of :func:`draw` for its results) are in
:mod:`agebias.evaluate.msc`; the shared look in :mod:`agebias.evaluate.figure_style`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from agebias.errors import DataError, SettingsError
from agebias.evaluate import msc
from agebias.evaluate.figure_style import save_figure, style
from agebias.evaluate.plot_common import sections
from agebias.evaluate.plot_det import draw_det
from agebias.evaluate.plot_fairness import draw_fairness
from agebias.evaluate.plot_gap import draw_genuine_vs_gap
from agebias.evaluate.plot_impostor import draw_impostor
from agebias.evaluate.plot_impostor import shared_fmr_scale  # noqa: F401  (re-exported: part of this module's API)
from agebias.evaluate.plot_rates import draw_rates
from agebias.evaluate.plot_scores import draw_scores

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


_DRAW: dict[str, Callable] = {
    "scores": draw_scores,
    "genuine_vs_gap": draw_genuine_vs_gap,
    "det": draw_det,
    "fairness_vs_fmr": draw_fairness,
    "rates": draw_rates,
    "impostor_table": draw_impostor,
}


def can_draw(results: dict, kind: str) -> bool:
    """True when ``results`` hold what figure ``kind`` shows (all-pairs sections; a group x group table)."""
    return bool(sections(results, kind))


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
