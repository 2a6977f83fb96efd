"""The look every evaluation figure shares: Okabe-Ito colours, font sizes legible at the size the reports show the
figures, atomic saving.

Size convention: figures are saved at :data:`DPI` (130) and the HTML reports show them at most 1168 px wide, so a
figure up to :data:`MAX_WIDTH` inches (9) is shown at full size; the fonts (8-11 pt) are chosen for that. Wider
figures are shrunk by the browser, so figure functions keep to that width.

:func:`new_figure` makes a :class:`matplotlib.figure.Figure` without pyplot (no global state, nothing to close,
and it shows in a notebook); drawing happens inside :func:`style` so the shared rcParams apply without changing the
caller's. :func:`pyplot` is the pyplot route (the ``msc`` protocol's figures), with the same settings applied
globally on the Agg backend.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
GENUINE, IMPOSTOR = "#0072B2", "#D55E00"
DPI = 130
MAX_WIDTH = 9.0  # inches: 1170 px at DPI, the widest figure the HTML reports show at full size

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "legend.title_fontsize": 8, "figure.titlesize": 11, "figure.labelsize": 9,
    "axes.grid": True, "grid.alpha": 0.3,
}


def _rc() -> dict:
    """:data:`STYLE` plus the Okabe-Ito colour cycle."""
    from matplotlib import cycler

    return {**STYLE, "axes.prop_cycle": cycler(color=OKABE_ITO)}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The shared rcParams for the figures drawn inside the block (the caller's settings are restored after)."""
    import matplotlib

    with matplotlib.rc_context(_rc()):
        yield


def new_figure(width: float, height: float):
    """An empty Figure of ``width`` x ``height`` inches with constrained layout (call inside :func:`style`)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend with the shared style applied globally."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(_rc())
    return plt


def save_figure(fig, out: Path, stem: str, formats: Sequence[str]) -> dict[str, str]:
    """Write ``out/<stem>.<fmt>`` for every format (:data:`DPI`, tight box, atomically); returns ``{fmt: path}``."""
    from agebias.atomic import atomic_path

    files = {}
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        target = out / f"{stem}.{fmt}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
        files[fmt] = str(target)
    return files


def smooth(counts: np.ndarray, width_bins: float = 2.0) -> np.ndarray:
    """Gaussian-smoothed density of a histogram (a binned KDE for display); ``width_bins`` is the kernel's sigma
    in bins, the output has the input's length."""
    k = np.arange(-4 * width_bins, 4 * width_bins + 1)
    ker = np.exp(-0.5 * (k / width_bins) ** 2)
    ker /= ker.sum()
    return np.convolve(counts, ker, mode="same")
