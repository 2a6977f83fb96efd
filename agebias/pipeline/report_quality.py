"""The experiment report's "Synthetic data quality" section: the generate stage's QC (``qc.json`` and its figures,
see :mod:`generators.qc`) in words, one table and three figures. It reads the QC files; it computes nothing.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from agebias.pipeline.report_format import html_figure, html_table, md_table

TITLE = "Synthetic data quality"
EG3D_REFERENCE = ("For comparison: the EG3D-Age thesis repository reports an apparent-age MAE of 4.1 years on its "
                  "synthetic faces, measured with a commercial estimator (4.26 years recomputed from its data at "
                  "truncation 0.75 with calibration). Different estimators err differently, so compare the size of "
                  "the numbers, not their decimals.")
FIGURES = (("apparent_vs_target_age", "apparent vs target age (one grey line per identity; dashed: y = x)"),
           ("identity_similarity", "identity similarity vs target age and vs age gap"),
           ("contact_sheet", "generated identities x target ages, labelled with their apparent ages"))
TABLE_HEADER = ["target age", "images", "faces found", "mean apparent age", "MAE (years)",
                "mean identity similarity", "rejected"]


def _qc(summaries: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    info = summaries.get("generate", {}).get("qc") or {}
    path = Path(info["json"]) if info.get("json") else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")), path.parent


def _num(value: Any, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def quality_paragraphs(summaries: dict[str, Any]) -> list[str] | None:
    """The section's sentences (None when the generate stage did not run)."""
    gen = summaries.get("generate", {})
    if not gen.get("enabled"):
        return None
    found = _qc(summaries)
    if found is None:
        return [f"Not measured: the generate stage ran without quality control. Set [generate] qc = true, or run "
                f"`agebias qc {gen.get('data', 'GENERATED_DIR')}`."]
    qc, _ = found
    sim = qc.get("identity_similarity", {})
    models = qc.get("models", {})
    age_model = (models.get("apparent_age") or {}).get("name", "an age estimator")
    lines = [qc.get("verdict", ""),
             f"Apparent ages by {age_model}; MAE {_num(qc.get('age_mae'))} years over "
             f"{qc.get('apparent_age_measured')} images (mean error {_num(qc.get('age_bias'), 1)} years, positive = "
             "older than asked). " + EG3D_REFERENCE]
    if sim.get("n"):
        lines.append(f"Identity ({models.get('identity', '?')}): cosine to each identity's reference (its source "
                     f"face, or its image at the middle target age) {_num(sim.get('mean'), 3)} on average, lowest "
                     f"{_num(sim.get('min'), 3)}; {qc.get('rejected', 0)} of {qc.get('images', 0)} images rejected "
                     f"(threshold {qc.get('settings', {}).get('min_similarity')}, or no face); "
                     f"{qc.get('missing_faces', 0)} without a face found.")
    return lines


def quality_table(summaries: dict[str, Any]) -> list[list[str]]:
    found = _qc(summaries)
    if found is None:
        return []
    return [[str(p["age"]), str(p["n"]), str(p["faces_found"]), _num(p["mean_apparent_age"]), _num(p["mae"]),
             _num(p["identity_similarity"].get("mean"), 3), str(p["rejected"])]
            for p in found[0].get("by_target_age", [])]


def quality_figures(summaries: dict[str, Any]) -> list[tuple[str, Path]]:
    found = _qc(summaries)
    if found is None:
        return []
    qc, folder = found
    names = qc.get("plots", {})
    return [(title, folder / names[key]) for key, title in FIGURES if key in names and (folder / names[key]).is_file()]


def shows_contact_sheet(summaries: dict[str, Any]) -> bool:
    """Whether the section shows the generated set's contact sheet (labelled with apparent ages)."""
    found = _qc(summaries)
    return found is not None and "contact_sheet" in found[0].get("plots", {})


def quality_markdown(summaries: dict[str, Any], out: Path) -> list[str]:
    """Markdown lines of the section (empty when the generate stage did not run)."""
    paragraphs = quality_paragraphs(summaries)
    if paragraphs is None:
        return []
    parts = [f"## {TITLE}", ""]
    for p in paragraphs:
        parts += [p, ""]
    rows = quality_table(summaries)
    if rows:
        parts += md_table(TABLE_HEADER, rows) + [""]
    for title, path in quality_figures(summaries):
        parts += [f"![{title}]({Path(os.path.relpath(path, out)).as_posix()})", ""]
    return parts


def quality_html(summaries: dict[str, Any]) -> list[str]:
    """HTML parts of the section (figures embedded; empty when the generate stage did not run)."""
    paragraphs = quality_paragraphs(summaries)
    if paragraphs is None:
        return []
    e = html.escape
    parts = [f"<h2>{TITLE}</h2>"] + [f"<p>{e(p)}</p>" for p in paragraphs]
    rows = quality_table(summaries)
    if rows:
        parts.append(html_table(TABLE_HEADER, rows))
    parts += [html_figure(title, path) for title, path in quality_figures(summaries)]
    return parts
