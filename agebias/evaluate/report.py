"""report.md and a self-contained report.html (figures embedded as base64, captioned by their protocol's figure
titles), written from results only."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from agebias.atomic import write_text
from agebias.evaluate.plots import figure_title


def fmt(x, digits: int = 4) -> str:
    """A number as the reports show it: ``n/a`` when undefined, 4 decimals (significant digits below 1e-3)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _ci(ci) -> str:
    if not ci or ci[0] is None:
        return "n/a"
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def result_tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) tables shared by both report formats."""
    out = []
    names = results["model_order"]
    secs = {n: results["models"][n] for n in names}
    if all("overall" in s and "eer" in s["overall"] for s in secs.values()):
        hdr = ["model", "tau", "FMR", "FNMR", "EER", "AUC", "d'", "FNMR@1e-2", "FNMR@1e-3", "FNMR@1e-4",
               "GARBE", "GARBE 95% CI", "FDR", "FDR 95% CI", "IR"]
        rows = []
        for n, s in secs.items():
            o, f = s["overall"], s.get("fairness", {})
            fa = o.get("fnmr_at_fmr", {})
            rows.append([n, fmt(o.get("threshold")), fmt(o.get("fmr")), fmt(o.get("fnmr")), fmt(o.get("eer")),
                         fmt(o.get("auc")), fmt(o.get("d_prime")), fmt(fa.get("0.01")), fmt(fa.get("0.001")),
                         fmt(fa.get("0.0001")), fmt(f.get("garbe")), _ci(f.get("garbe_ci")), fmt(f.get("fdr")),
                         _ci(f.get("fdr_ci")), fmt(f.get("ir"))])
        out.append(("Overall (one global threshold)", hdr, rows))
    for n, s in secs.items():
        if s.get("protocol") == "msc":
            rows = [[c, fmt(d["n_identities"]), fmt(d["n_nan"]), fmt(d["mean"]), fmt(d["std"])]
                    for c, d in s["column_summary"].items()]
            out.append((f"Legacy MSc protocol, per-identity mean scores: {n}",
                        ["column", "identities", "NaN (no pair)", "mean", "std"], rows))
            sw = s["garbe_sweep"]
            rows = [[fmt(t), fmt(sw["fmr_young"][i]), fmt(sw["fmr_old"][i]), fmt(sw["fnmr_young"][i]),
                     fmt(sw["fnmr_old"][i]), fmt(sw["garbe"][i])] for i, t in enumerate(sw["threshold"]) if i % 4 == 0]
            out.append((f"Legacy MSc GARBE sweep (young 5-20 vs old 45-70, every 0.1): {n}",
                        ["threshold", "FMR young", "FMR old", "FNMR young", "FNMR old", "GARBE"], rows))
            continue
        if "groups" not in s:
            continue
        hdr = ["age group", "genuine pairs", "impostor pairs", "FMR", "FMR 95% CI (subjects)", "FNMR",
               "FNMR 95% CI (subjects)", "EER", "AUC"]
        rows = [[g, fmt(d.get("n_genuine")), fmt(d.get("n_impostor")), fmt(d.get("fmr")), _ci(d.get("fmr_ci")),
                 fmt(d.get("fnmr")), _ci(d.get("fnmr_ci")), fmt(d.get("eer")), fmt(d.get("auc"))]
                for g, d in s["groups"].items()]
        out.append((f"Per age group: {n}", hdr, rows))
        small = (s.get("groups_small_gap") or {}).get("groups")
        if small:
            rows = [[g, fmt(d["n_genuine"]), fmt(d["fnmr"]), _ci(d["fnmr_ci"]), fmt(d["mean_score"])]
                    for g, d in small.items()]
            out.append((f"Genuine pairs within {s['groups_small_gap']['max_gap']} years, same age group: {n} "
                        f"(FNMR without the age-gap effect)", ["age group", "genuine pairs", "FNMR",
                                                              "95% CI (subjects)", "mean score"], rows))
        if s.get("age_gap"):
            rows = [[g, fmt(d["n_genuine"]), fmt(d["fnmr"]), _ci(d["fnmr_ci"]), fmt(d["mean_score"])]
                    for g, d in s["age_gap"].items()]
            out.append((f"Genuine pairs by age gap: {n}", ["age gap", "genuine pairs", "FNMR",
                                                           "95% CI (subjects)", "mean score"], rows))
        ident = s.get("identification")
        if ident:
            rows = [[g, fmt(d["n_probes"]), fmt(d["rank1_accuracy"]), fmt(d["mean_rank_by_identity"])]
                    for g, d in ident["groups"].items()]
            out.append((f"Identification (rank-1, all-vs-all): {n}; disparity {fmt(ident['disparity'])}, "
                        f"error ratio {fmt(ident['error_ratio'])}, rank disparity {fmt(ident['rank_disparity'])}",
                        ["group", "probes", "rank-1 accuracy", "mean rank (0 = top)"], rows))
        inst = s.get("instance_level")
        if inst:
            rows = [[g, fmt(d["tpr_mean"]), fmt(d["tpr_std"]), fmt(d["fpr_mean"]), fmt(d["fpr_std"]),
                     fmt(d["n_identities_tpr"])] for g, d in [("overall", inst["overall"]), *inst["groups"].items()]]
            out.append((f"Instance level (MixFairFace, tau at FPR {fmt(inst['target_fpr'])}): {n}",
                        ["group", "TPR mean", "TPR std", "FPR mean", "FPR std", "identities"], rows))
    return out


def _summary_lines(results: dict) -> list[str]:
    st = results["settings"]
    ds = results["dataset"]
    first = results["models"][results["model_order"][0]]
    data = first.get("data", {})
    lines = [
        f"Dataset: {ds.get('name') or 'n/a'} ({ds.get('root') or ''}), {ds.get('n_records')} images evaluated, "
        f"{len(ds.get('skipped', []))} skipped.",
        *([ds["preparation"]["summary"]] if (ds.get("preparation") or {}).get("summary") else []),
        f"Models: {', '.join(results['model_order'])}.",
        f"Protocol: {st['protocol']}" + (" (the legacy MSc thesis evaluation, kept for comparison; see its flaws)"
                                         if st["protocol"] == "msc" else " (every pair i < j)") + ".",
    ]
    if st["protocol"] != "msc":
        lines += [
            "Operating point: " + (f"fixed threshold {st['threshold']}" if st.get("threshold") is not None
                                    else f"global threshold at target FMR {st['target_fmr']:g} from the pooled "
                                         f"impostors") + f"; alpha {st['alpha']}.",
            f"Age groups: {st['age_bins']}; pair grouping: {first.get('pair_grouping', {}).get('description', '')}.",
            f"Subjects: {data.get('n_subjects')}, genuine pairs: {fmt(data.get('n_genuine'))}, impostor pairs: "
            f"{fmt(data.get('n_impostor'))}; images per age group: "
            + ", ".join(f"{k} {v}" for k, v in (data.get("images_per_group") or {}).items()) + ".",
            "Conventions: accept iff score >= tau; intervals are percentile intervals over resampled subjects, "
            "widened to Clopper-Pearson where that is wider (results.json: fmr_ci, fnmr_ci); Clopper-Pearson "
            "intervals, which assume independent pairs, are in fmr_pairs_ci and fnmr_pairs_ci.",
        ]
    return lines


def _warnings(results: dict) -> list[str]:
    w = []
    for n in results["model_order"]:
        for msg in results["models"][n].get("warnings", []):
            w.append(f"{n}: {msg}" if len(results["model_order"]) > 1 else msg)
    if results["dataset"].get("skipped"):
        w.append(f"{len(results['dataset']['skipped'])} files were skipped (listed at the end).")
    return list(dict.fromkeys(w))


def markdown(results: dict, figures: dict, base: Path) -> str:
    parts = ["# Age-bias evaluation report", ""]
    parts += [f"- {line}" for line in _summary_lines(results)]
    warns = _warnings(results)
    if warns:
        parts += ["", "## Warnings", ""] + [f"- {w}" for w in warns]
    for title, hdr, rows in result_tables(results):
        parts += ["", f"## {title}", "", "| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
        parts += ["| " + " | ".join(r) + " |" for r in rows]
    if figures:
        parts += ["", "## Figures", ""]
        for stem, files in figures.items():
            f = files.get("png") or files.get("svg") or next(iter(files.values()))
            parts.append(f"![{figure_title(results, stem)}]({Path(f).relative_to(base).as_posix()})")
    sk = results["dataset"].get("skipped") or []
    if sk:
        parts += ["", "## Skipped files", ""] + [f"- {s['path']}: {s['reason']}" for s in sk]
    return "\n".join(parts) + "\n"


def _embed(files: dict) -> str:
    if "svg" in files:
        data = Path(files["svg"]).read_bytes()
        return f'<img alt="" src="data:image/svg+xml;base64,{base64.b64encode(data).decode()}">'
    if "png" in files:
        data = Path(files["png"]).read_bytes()
        return f'<img alt="" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
    return "<p>(figure only available as PDF)</p>"


def html_report(results: dict, figures: dict) -> str:
    e = html.escape
    css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
           "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}.warn{background:#fff4e0;"
           "border-left:4px solid #E69F00;padding:.5em 1em}img{max-width:100%;margin:.5em 0}")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Age-bias evaluation</title><style>{css}</style>"
           "</head><body><h1>Age-bias evaluation report</h1><ul>"]
    out += [f"<li>{e(line)}</li>" for line in _summary_lines(results)]
    out.append("</ul>")
    warns = _warnings(results)
    if warns:
        out.append("<div class='warn'><h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in warns)
                   + "</ul></div>")
    for title, hdr, rows in result_tables(results):
        out.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in hdr) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        out.append("</table>")
    if figures:
        out.append("<h2>Figures</h2>")
        for stem, files in figures.items():
            out.append(f"<h3>{e(figure_title(results, stem))}</h3>{_embed(files)}")
    sk = results["dataset"].get("skipped") or []
    if sk:
        out.append("<h2>Skipped files</h2><ul>" + "".join(f"<li>{e(s['path'])}: {e(s['reason'])}</li>" for s in sk)
                   + "</ul>")
    st = results["settings"]
    out.append("<h2>Settings</h2><table>" + "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>"
                                                    for k, v in st.items()) + "</table></body></html>")
    return "\n".join(out)


def write_reports(results: dict, out: Path, figures: dict) -> None:
    write_text(out / "report.md", markdown(results, figures, out))
    write_text(out / "report.html", html_report(results, figures))
