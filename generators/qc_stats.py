"""The numbers of a generated set's quality control, from its per-image rows (pure functions, no files).

Row keys: ``id``, ``age`` (target, years), ``apparent_age`` (years or None), ``identity_similarity`` (cosine to the
identity's reference, or None), ``face_found``, ``accepted``. Conventions:

- ``age_error`` = apparent - target (years; positive = looks older); ``age_mae`` = mean |age_error|, ``age_bias`` =
  mean age_error, over images with an apparent age;
- ``age_pearson_r``: Pearson correlation of target and apparent age over the same images (None when either is
  constant); ``age_slope`` / ``age_intercept``: least-squares line apparent = intercept + slope * target;
- identity similarity by age gap: cosine between two images of the same identity, grouped by the gap between their
  target ages (|a - b| in whole years, bins :data:`GAP_BINS`, inclusive).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

GAP_BINS: tuple[tuple[int, int | None], ...] = ((0, 4), (5, 9), (10, 19), (20, 39), (40, None))
"""Target-age gap bins (inclusive; None = no upper end)."""

FOLLOWS_R, FOLLOWS_SLOPE = 0.8, 0.5
"""The verdict "follows the target" needs r >= FOLLOWS_R and a slope in [FOLLOWS_SLOPE, 1 / FOLLOWS_SLOPE]."""
FLAT_SLOPE = 0.25
"""Below this slope (years of apparent age per year of target) apparent ages "barely move"."""
ESTIMATOR_MAX_AGE = 80
"""The age estimator's oldest class (80 years and over)."""


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r of two equally long sequences; None with fewer than 2 values or a constant one."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return None if denom == 0 else float((dx * dy).sum()) / denom


def line_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line y = intercept + slope * x; None when x is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or float(np.ptp(x)) == 0:
        return None
    dx = x - x.mean()
    slope = float((dx * (y - y.mean())).sum() / (dx * dx).sum())
    return float(y.mean() - slope * x.mean()), slope


def gap_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "min": None, "max": None}
    return {"n": int(len(v)), "mean": _r(v.mean()), "min": _r(v.min()), "max": _r(v.max())}


def _r(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def summarize(rows: Sequence[dict[str, Any]], pairs: Iterable[tuple[int, float]] = ()) -> dict[str, Any]:
    """The QC summary of ``rows`` (see the module notes); ``pairs``: (target-age gap, cosine) of same-identity
    image pairs."""
    measured = [r for r in rows if r.get("apparent_age") is not None]
    targets = [float(r["age"]) for r in measured]
    apparent = [float(r["apparent_age"]) for r in measured]
    errors = [a - t for a, t in zip(apparent, targets, strict=True)]
    fit = line_fit(targets, apparent)
    by_age: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_age[int(r["age"])].append(r)
    per_age = []
    for age in sorted(by_age):
        group = by_age[age]
        ages = [float(r["apparent_age"]) for r in group if r.get("apparent_age") is not None]
        sims = [float(r["identity_similarity"]) for r in group if r.get("identity_similarity") is not None]
        per_age.append({
            "age": age, "n": len(group), "faces_found": sum(bool(r.get("face_found")) for r in group),
            "mean_apparent_age": _r(np.mean(ages), 2) if ages else None,
            "sd_apparent_age": _r(np.std(ages, ddof=1), 2) if len(ages) > 1 else None,
            "mae": _r(np.mean([abs(a - age) for a in ages]), 2) if ages else None,
            "identity_similarity": _stats(sims),
            "rejected": sum(not r.get("accepted") for r in group),
        })
    gaps: dict[tuple[int, int | None], list[float]] = {b: [] for b in GAP_BINS}
    for gap, cos in pairs:
        for lo, hi in GAP_BINS:
            if gap >= lo and (hi is None or gap <= hi):
                gaps[(lo, hi)].append(float(cos))
                break
    sims_all = [float(r["identity_similarity"]) for r in rows if r.get("identity_similarity") is not None]
    means = [p["mean_apparent_age"] for p in per_age if p["mean_apparent_age"] is not None]
    summary = {
        "images": len(rows), "identities": len({r["id"] for r in rows}),
        "faces_found": sum(bool(r.get("face_found")) for r in rows),
        "missing_faces": sum(not r.get("face_found") for r in rows),
        "rejected": sum(not r.get("accepted") for r in rows),
        "apparent_age_measured": len(measured),
        "age_mae": _r(np.mean(np.abs(errors)), 3) if errors else None,
        "age_bias": _r(np.mean(errors), 3) if errors else None,
        "age_pearson_r": _r(pearson_r(targets, apparent)),
        "age_slope": _r(fit[1]) if fit else None,
        "age_intercept": _r(fit[0], 3) if fit else None,
        "target_age_range": [min(by_age), max(by_age)] if by_age else None,
        "mean_apparent_age_range": [min(means), max(means)] if means else None,
        "by_target_age": per_age,
        "identity_similarity": _stats(sims_all),
        "identity_by_age_gap": [{"gap": gap_label(lo, hi), **_stats(v)} for (lo, hi), v in gaps.items() if v],
    }
    return summary


def age_verdict(summary: dict[str, Any], *, geometry_only: bool = False) -> str:
    """One plain sentence, with numbers, on whether the apparent ages follow the target ages (thresholds
    :data:`FOLLOWS_R`, :data:`FOLLOWS_SLOPE`, :data:`FLAT_SLOPE`)."""
    per_age = [p for p in summary.get("by_target_age", []) if p["mean_apparent_age"] is not None]
    if summary.get("apparent_age_measured", 0) < 2 or len(per_age) < 2:
        return ("Whether apparent age follows the target cannot be said: apparent ages were measured at fewer than "
                "two target ages.")
    mae, r, slope = summary["age_mae"], summary["age_pearson_r"], summary["age_slope"]
    lo_t, hi_t = summary["target_age_range"]
    lo_a, hi_a = summary["mean_apparent_age_range"]
    r_text = "undefined" if r is None else f"{r:.2f}"
    numbers = f"MAE {mae:.1f} years, r = {r_text}, slope {slope:.2f}"
    means = f"{lo_a:.0f}" if round(lo_a) == round(hi_a) else f"{lo_a:.0f}-{hi_a:.0f}"
    spread = f"mean apparent age {means} years for targets {lo_t}-{hi_t}"
    if slope < FLAT_SLOPE:
        text = f"Apparent ages barely move with the target ({spread}; {numbers})"
        text += ", as a geometry-only warp would give" if geometry_only else ""
        text += ": the generator did not produce the ages asked for."
    elif r is not None and r >= FOLLOWS_R and FOLLOWS_SLOPE <= slope <= 1 / FOLLOWS_SLOPE:
        text = f"Apparent age follows the target: {numbers} ({spread})."
    else:
        text = f"Apparent age follows the target only in part: {numbers} ({spread})."
    if hi_t > ESTIMATOR_MAX_AGE:
        text += f" The estimator's classes stop at {ESTIMATOR_MAX_AGE} years, so older targets read as at most that."
    return text
