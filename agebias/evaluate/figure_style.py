"""The look every evaluation figure shares: matplotlib Agg, Okabe-Ito colours, atomic saving.

Used by the figure functions of each protocol (:mod:`agebias.evaluate.plots` for all-pairs,
:mod:`agebias.evaluate.msc` for the legacy protocol). matplotlib is imported on the first :func:`pyplot` call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
GENUINE, IMPOSTOR = "#0072B2", "#D55E00"


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend with the shared style (font sizes, light grid, Okabe-Ito cycle)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.prop_cycle": plt.cycler(color=OKABE_ITO)})
    return plt


def save_figure(fig, out: Path, stem: str, formats: Sequence[str]) -> dict[str, str]:
    """Write ``out/<stem>.<fmt>`` for every format (130 dpi, tight box, atomically); returns ``{fmt: path}``."""
    from agebias.atomic import atomic_path

    files = {}
    out.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        target = out / f"{stem}.{fmt}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=130, bbox_inches="tight")
        files[fmt] = str(target)
    return files


def smooth(counts: np.ndarray, width_bins: float = 2.0) -> np.ndarray:
    """Gaussian-smoothed density of a histogram (a binned KDE for display); ``width_bins`` is the kernel's sigma
    in bins, the output has the input's length."""
    k = np.arange(-4 * width_bins, 4 * width_bins + 1)
    ker = np.exp(-0.5 * (k / width_bins) ** 2)
    ker /= ker.sum()
    return np.convolve(counts, ker, mode="same")
