"""The files of an evaluation: results.json, groups.csv, plots/ and the reports (written by
:meth:`agebias.evaluate.result.EvaluationResult.save`). Plots and reports only read the results dict."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from agebias.atomic import write_json, write_text


def groups_csv(results: dict) -> str:
    """One row per model and group (plus each model's overall row)."""
    rows = []
    for name in results["model_order"]:
        sec = results["models"][name]
        if "groups" not in sec or "overall" not in sec:
            continue
        for g, d in [*sec["groups"].items(), ("overall", sec["overall"])]:
            row = {"model": name, "group": g}
            for k in ("n_genuine", "n_impostor", "false_matches", "false_non_matches", "fmr", "fnmr"):
                row[k] = d.get(k)
            for k in ("fmr_ci", "fnmr_ci"):
                ci = d.get(k) or [None, None]
                row[f"{k}_low"], row[f"{k}_high"] = ci[0], ci[1]
            row["threshold"] = sec["overall"].get("threshold")
            for k in ("eer", "eer_threshold", "auc", "d_prime"):
                row[k] = d.get(k)
            for t, v in (d.get("fnmr_at_fmr") or {}).items():
                row[f"fnmr_at_fmr_{t}"] = v
            rows.append(row)
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None or (isinstance(v, float) and v != v) else v) for k, v in r.items()})
    return buf.getvalue()


def write_outputs(results: dict, out: Path, plots: bool = True) -> dict:
    """results.json, groups.csv, plots/*, report.md, report.html. Plots and reports only read ``results``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    text = groups_csv(results)
    if text:
        write_text(out / "groups.csv", text)
    figures = {}
    if plots:
        from agebias.evaluate.plots import make_plots

        figures = make_plots(results, out / "plots", formats=results["settings"].get("formats") or ["png"])
    from agebias.evaluate.report import write_reports

    write_reports(results, out, figures)
    return figures
