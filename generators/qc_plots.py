"""The figures of a generated set's quality control; they read the QC rows and summary, they compute nothing.

- ``apparent_vs_target_age.png``: apparent against target age, one grey line per identity, the mean per target age,
  and the line y = x (apparent = target);
- ``identity_similarity.png``: left, each image's cosine to its identity's reference against target age (threshold
  dashed, rejected images marked); right, cosine between two images of one identity by their target-age gap;
- ``contact_sheet_apparent_age.png``: identities (rows, at most :data:`MAX_SHEET_ROWS`) x target ages (columns),
  each image labelled with its apparent age; the reference face first when the identity has a source photo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agebias.evaluate.figure_style import DPI, OKABE_ITO, new_figure, save_figure, style
from generators.qc_stats import ESTIMATOR_MAX_AGE

MAX_SHEET_ROWS = 24
GREY, MEAN, BAD = "#9a9a9a", OKABE_ITO[0], OKABE_ITO[3]


def _by_identity(rows: Sequence[dict[str, Any]], key: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get(key) is not None:
            out.setdefault(r["id"], []).append((int(r["age"]), float(r[key])))
    return {k: sorted(v) for k, v in out.items()}


def plot_apparent_vs_target(rows: Sequence[dict[str, Any]], summary: dict[str, Any], out: Path) -> Path:
    with style():
        fig = new_figure(5.2, 4.8)
        ax = fig.add_subplot()
        for i, points in enumerate(_by_identity(rows, "apparent_age").values()):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=GREY, lw=0.9, marker="o", ms=3, alpha=0.8, label="one identity" if i == 0 else None)
        per_age = [p for p in summary["by_target_age"] if p["mean_apparent_age"] is not None]
        if per_age:
            ax.plot([p["age"] for p in per_age], [p["mean_apparent_age"] for p in per_age], color=MEAN, lw=2,
                    marker="s", ms=6, label="mean per target age", zorder=3)
        top = max([80.0] + [float(r["age"]) for r in rows] + [float(r["apparent_age"]) for r in rows
                                                                if r.get("apparent_age") is not None]) + 4
        ax.plot([0, top], [0, top], color="black", ls="--", lw=1, label="y = x (apparent = target)")
        ax.axhline(ESTIMATOR_MAX_AGE, color="black", ls=":", lw=0.8)
        ax.annotate(f"estimator's top class ({ESTIMATOR_MAX_AGE}+)", (0, ESTIMATOR_MAX_AGE), xytext=(3, -10),
                    textcoords="offset points", ha="left", fontsize=7)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_aspect("equal")
        ax.set_xlabel("target age (years)")
        ax.set_ylabel("apparent age (years, estimated)")
        r = summary.get("age_pearson_r")
        if summary.get("age_mae") is not None:
            ax.set_title(f"Apparent vs target age: MAE {summary['age_mae']:.1f} y, "
                         f"r = {'n/a' if r is None else f'{r:.2f}'}, slope {summary['age_slope']:.2f}")
        else:
            ax.set_title("Apparent vs target age: no apparent age measured")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
        target = Path(save_figure(fig, out, "apparent_vs_target_age", ["png"])["png"])
    return target


def plot_identity_similarity(rows: Sequence[dict[str, Any]], summary: dict[str, Any], threshold: float,
                             out: Path) -> Path:
    with style():
        fig = new_figure(9.0, 3.8)
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.35, 1]})
        for i, points in enumerate(_by_identity(rows, "identity_similarity").values()):
            xs, ys = zip(*points, strict=True)
            left.plot(xs, ys, color=GREY, lw=0.9, marker="o", ms=3, alpha=0.8, label="one identity" if i == 0 else None)
        per_age = [p for p in summary["by_target_age"] if p["identity_similarity"]["n"]]
        if per_age:
            left.plot([p["age"] for p in per_age], [p["identity_similarity"]["mean"] for p in per_age], color=MEAN,
                      lw=2, marker="s", ms=6, label="mean per target age", zorder=3)
        bad = [(r["age"], r["identity_similarity"]) for r in rows
               if not r.get("accepted") and r.get("identity_similarity") is not None]
        if bad:
            left.scatter(*zip(*bad, strict=True), s=36, c=BAD, marker="x", label="rejected", zorder=4)
        left.axhline(threshold, color=BAD, ls="--", lw=1, label=f"rejection threshold {threshold:g}")
        left.set_xlabel("target age (years)")
        left.set_ylabel("cosine similarity to the identity's reference")
        left.set_title("Identity kept? Cosine to the reference, by target age")
        left.set_ylim(min(-0.05, threshold - 0.1), 1.1)
        left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
        gaps = summary.get("identity_by_age_gap", [])
        if gaps:
            xs = np.arange(len(gaps))
            means = [g["mean"] for g in gaps]
            lo = [g["mean"] - g["min"] for g in gaps]
            hi = [g["max"] - g["mean"] for g in gaps]
            right.errorbar(xs, means, yerr=[lo, hi], fmt="s", color=MEAN, ms=6, capsize=4)
            for x, g in zip(xs, gaps, strict=True):
                right.annotate(f"{g['n']} pairs", (x, g["max"]), textcoords="offset points", xytext=(0, 6),
                               ha="center", fontsize=7)
            right.set_xticks(xs, [g["gap"] for g in gaps])
            right.set_xlim(-0.5, len(gaps) - 0.5)
        else:
            right.text(0.5, 0.5, "fewer than two images per identity", ha="center", va="center",
                       transform=right.transAxes)
        right.set_ylim(left.get_ylim())
        right.set_xlabel("gap between the two target ages (years)")
        right.set_ylabel("cosine similarity, same identity")
        right.set_title("Identity vs age gap: pairs of one identity's images\n(mean; bars from min to max)")
        target = Path(save_figure(fig, out, "identity_similarity", ["png"])["png"])
    return target


def plot_contact_sheet(rows: Sequence[dict[str, Any]], images: dict[str, np.ndarray], out: Path, *,
                       references: dict[str, np.ndarray] | None = None,
                       reference_ages: dict[str, float | None] | None = None, cell: int = 112) -> Path:
    """``images``: row path -> uint8 RGB image (any size; shown at ``cell`` px); ``references``: id -> source
    face, ``reference_ages``: id -> its apparent age."""
    from PIL import Image

    ids: list[str] = []
    for r in rows:
        if r["id"] not in ids:
            ids.append(r["id"])
    ids = ids[:MAX_SHEET_ROWS]
    ages = sorted({int(r["age"]) for r in rows if r["id"] in ids})
    refs = {k: v for k, v in (references or {}).items() if k in ids}
    cols = len(ages) + (1 if refs else 0)
    pad, band = 4, 22  # white gap between cells; label band under each image (px)
    h, w = len(ids) * (cell + band + pad), cols * (cell + pad)
    mosaic = np.full((h, w, 3), 255, np.uint8)
    labels: list[tuple[float, float, str, str]] = []

    def put(image: np.ndarray, row: int, col: int) -> tuple[int, int]:
        thumb = np.asarray(Image.fromarray(np.asarray(image, np.uint8)).convert("RGB").resize((cell, cell),
                                                                                              Image.BILINEAR))
        y, x = row * (cell + band + pad), col * (cell + pad)
        mosaic[y:y + cell, x:x + cell] = thumb
        return y, x

    first = 1 if refs else 0
    by_key = {(r["id"], int(r["age"])): r for r in rows}
    for i, ident in enumerate(ids):
        if ident in refs:
            y, x = put(refs[ident], i, 0)
            ref_age = (reference_ages or {}).get(ident)
            text = "source" if ref_age is None else f"source, looks {ref_age:.0f}"
            labels.append((x + cell / 2, y + cell + band / 2, text, "black"))
        for j, age in enumerate(ages):
            r = by_key.get((ident, age))
            if r is None or r["path"] not in images:
                continue
            y, x = put(images[r["path"]], i, first + j)
            if r.get("apparent_age") is None:
                labels.append((x + cell / 2, y + cell + band / 2, "no face", BAD))
            else:
                labels.append((x + cell / 2, y + cell + band / 2, f"looks {r['apparent_age']:.0f}", "black"))
    with style():
        fig = new_figure(w / DPI + 1.6, h / DPI + 0.5)  # one mosaic pixel per output pixel at DPI
        ax = fig.add_subplot()
        ax.imshow(mosaic, interpolation="nearest")
        for x, y, text, colour in labels:
            ax.text(x, y, text, ha="center", va="center", fontsize=8, color=colour)
        ax.set_xticks([c * (cell + pad) + cell / 2 for c in range(cols)],
                      (["source"] if refs else []) + [f"target {a}" for a in ages])
        ax.xaxis.tick_top()
        ax.set_yticks([i * (cell + band + pad) + cell / 2 for i in range(len(ids))],
                      [i if len(i) <= 36 else i[:35] + "…" for i in ids])
        ax.tick_params(length=0)
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        target = Path(save_figure(fig, out, "contact_sheet_apparent_age", ["png"])["png"])
    return target
