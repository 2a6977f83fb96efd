"""What every all-pairs figure of :mod:`agebias.evaluate.plots` shares: the model sections a figure draws, its
canvas (a new figure, or the caller's ``ax`` for a one-panel figure), each model's tau (its global threshold) and
label, and the grey note an empty panel shows instead of data.
"""

from __future__ import annotations

import math

import numpy as np

from agebias.errors import SettingsError
from agebias.evaluate.figure_style import new_figure


def sections(results: dict, kind: str = "") -> list[tuple[str, dict]]:
    """The models with all-pairs group results and histograms, in the results' order (``impostor_table``: those
    with a group x group table)."""
    secs = [(m, results["models"][m]) for m in results["model_order"] if "groups" in results["models"][m]
            and "histograms" in results["models"][m]]
    if kind == "impostor_table":
        secs = [(m, s) for m, s in secs if s.get("impostor_table")]
    return secs


def canvas(ax, kind: str, nrows: int, ncols: int, width: float, height: float, models: int = 1, **kw):
    """(figure, 2-D array of axes): a new figure, or the caller's ``ax`` when the figure has one panel
    (``models``: how many models the panels show, one column each, or 1 when the panels are not per model)."""
    if ax is None:
        fig = new_figure(width, height)
        return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)
    if nrows * ncols != 1:
        hint = " or pick one model with result[name]" if models > 1 else ""
        raise SettingsError(f"plot kind '{kind}' draws {nrows * ncols} panels for these results; call it without "
                            f"ax{hint}")
    return ax.figure, np.array([[ax]])


def model_tau(sec: dict) -> float | None:
    """The model's tau (its global threshold, ``overall.threshold``); None when absent or not finite."""
    tau = sec.get("overall", {}).get("threshold")
    return tau if tau is not None and math.isfinite(tau) else None


def model_label(name: str, sec: dict) -> str:
    """``name (tau = 0.123)``, or the name alone when the model has no tau."""
    tau = model_tau(sec)
    return f"{name} (tau = {tau:.3f})" if tau is not None else name


def note(ax, text: str, **kw) -> None:
    """A grey explanation in the middle of an (empty) panel, its lines wrapped to fit a half-width panel."""
    import textwrap

    lines = [textwrap.fill(line, 56) for line in text.split("\n")]
    ax.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", transform=ax.transAxes, color="#444444", **kw)
