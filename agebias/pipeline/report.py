"""The experiment report (``<out>/report.md`` and a self-contained ``<out>/report.html``).

Its first screen says what was run, on what, what is unusual about it (random initialisation, demo-scale data,
a geometry-only generator) and the headline table; the figures and per-stage details follow. It reads the stage
summaries and the evaluator's ``results.json`` files; it computes no metric itself.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from agebias.atomic import write_text
from agebias.evaluate.report import fmt, result_tables
from agebias.pipeline.report_format import html_figure, html_table, md_table
from agebias.pipeline.report_quality import quality_html, quality_markdown, shows_contact_sheet
from agebias.pipeline.schema import Experiment

FIGURE_ORDER = ("score_distributions", "group_rates", "det", "fairness_vs_fmr", "genuine_vs_age_gap")


def _results(summaries: dict[str, Any]) -> dict[str, dict]:
    out = {}
    for protocol, folder in summaries.get("evaluate", {}).get("protocols", {}).items():
        path = Path(folder) / "results.json"
        if path.is_file():
            out[protocol] = json.loads(path.read_text(encoding="utf-8"))
    return out


def caveats(exp: Experiment, summaries: dict[str, Any]) -> list[str]:
    """Plain-word notes on what makes this run differ from a real measurement."""
    notes = []
    ft, gen, ev = exp.section("finetune"), exp.section("generate"), exp.section("evaluate")
    fin, e = summaries.get("finetune", {}), summaries.get("evaluate", {})
    if ft["enabled"] and ft["init"] == "random":
        notes.append(f"The fine-tuned model is a small network ({ft['backbone']}) trained from RANDOM "
                     f"initialisation for {fin.get('epochs', ft['epochs'])} epochs, because no pretrained ArcFace "
                     "weights were configured; its numbers show that the pipeline works, not what fine-tuning "
                     "does to a real model. Set [finetune] backbone to an arcface_torch backbone.pth to measure that.")
    g = summaries.get("generate", {})
    if gen["enabled"] and gen["method"] == "cardioid":
        notes.append("The age-varied images come from the cardioid generator: a geometric craniofacial-growth warp "
                     "of real photos (head shape only, no skin or texture ageing).")
    if ev["dataset"] == "generated" and ev["identities"] == "held-out":
        held = e.get("held_out_identities") or fin.get("held_out_identities") or []
        notes.append(f"The evaluation set is the part of the generated set that fine-tuning never saw: the {len(held)} "
                     f"identities its seeded split held out ({', '.join(held)}), "
                     f"{g.get('identities', '?')} generated in all; the fine-tuned model is its final epoch, not an "
                     "epoch chosen on them. For an age-bias measurement evaluate on FG-NET (dataset = \"fgnet\").")
    elif ev["dataset"] == "generated":
        notes.append(f"The evaluation set is the generated set itself ({g.get('identities', '?')} identities x "
                     f"{len(g.get('ages', []))} ages); the fine-tuned model was trained on most of these identities. "
                     "For an age-bias measurement evaluate on FG-NET (dataset = \"fgnet\").")
    n_ids = e.get("subjects")
    if n_ids is not None and n_ids < 30:
        notes.append(f"Only {n_ids} identities are evaluated: confidence intervals are wide and group rates rest "
                     "on few pairs.")
    return notes


def _reference_model(exp: Experiment, summaries: dict[str, Any], order: list[str]) -> str | None:
    """The evaluated model that fine-tuning started from: ``baseline``, or the one whose spec is the backbone."""
    if "baseline" in order:
        return "baseline"
    specs = summaries.get("evaluate", {}).get("models", {})
    return next((m for m in order if m != "finetuned" and specs.get(m) == exp.section("finetune")["backbone"]), None)


def _value_ci(value, ci) -> str:
    text = "undefined" if value is None or value != value else f"{value:.3f}"
    if ci and len(ci) == 2 and all(isinstance(v, (int, float)) and v == v for v in ci):
        return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text + ("" if text == "undefined" else " (no interval in results.json)")


def _verdict(label: str, a: tuple, b: tuple) -> str | None:
    """Whether two (value, interval) pairs differ beyond their intervals (None when either is missing)."""
    (va, ca), (vb, cb) = a, b
    if not (ca and cb and len(ca) == 2 and len(cb) == 2) or None in (*ca, *cb) or va is None or vb is None:
        return None
    if ca[1] < cb[0] or cb[1] < ca[0]:
        return f"{label} moved beyond both intervals ({'down' if vb < va else 'up'})"
    return f"the {label} intervals overlap, so this run does not show a change in {label}"


def what_changed(exp: Experiment, summaries: dict[str, Any], results: dict[str, dict]) -> str | None:
    """One paragraph comparing the pretrained starting point with the fine-tuned model (all-pairs results.json:
    EER, FNMR at the target FMR, GARBE and FDR, each with its interval where results.json has one), or None when the run
    evaluated no such pair of models. It states only what the intervals support."""
    res = results.get("all-pairs")
    if res is None or "finetuned" not in res.get("model_order", []):
        return None
    ref = _reference_model(exp, summaries, res["model_order"])
    if ref is None:
        return None
    ft, ev, fin = exp.section("finetune"), exp.section("evaluate"), summaries.get("finetune", {})
    a, b = res["models"][ref], res["models"]["finetuned"]
    level = res.get("settings", {}).get("confidence", 0.95)
    target = a["overall"].get("target_fmr") or res.get("settings", {}).get("target_fmr")
    data = b.get("data", {})
    n_ids = data.get("n_subjects")
    where = ("identities that fine-tuning never saw (its held-out split)" if ev["identities"] == "held-out"
             else "identities that include the ones it was trained on")
    metrics = [("EER", (a["overall"].get("eer"), a["overall"].get("eer_ci")),
                (b["overall"].get("eer"), b["overall"].get("eer_ci"))),
               (f"FNMR at FMR {target}", (a["overall"].get("fnmr"), a["overall"].get("fnmr_ci")),
                (b["overall"].get("fnmr"), b["overall"].get("fnmr_ci"))),
               ("GARBE", (a["fairness"].get("garbe"), a["fairness"].get("garbe_ci")),
                (b["fairness"].get("garbe"), b["fairness"].get("garbe_ci"))),
               ("FDR", (a["fairness"].get("fdr"), a["fairness"].get("fdr_ci")),
                (b["fairness"].get("fdr"), b["fairness"].get("fdr_ci")))]
    changes = "; ".join(f"{label} {_value_ci(*x)} -> {_value_ci(*y)}" for label, x, y in metrics)
    d_a, d_b = a["overall"].get("d_prime"), b["overall"].get("d_prime")
    if isinstance(d_a, (int, float)) and isinstance(d_b, (int, float)):
        changes += f"; d' (genuine/impostor separation, no interval) {d_a:.2f} -> {d_b:.2f}"
    verdicts = [v for v in (_verdict(label, x, y) for label, x, y in metrics) if v]
    if a["overall"].get("eer") == 0 and b["overall"].get("eer") == 0:
        verdicts.insert(0, "both models separate every genuine pair from every impostor pair here (EER 0), so "
                           "these pairs cannot show an improvement")
    text = (f"{ref} (the pretrained starting point) against finetuned ({ft['backbone']} fine-tuned for "
            f"{fin.get('epochs', ft['epochs'])} epochs on {len(fin.get('trained_identities') or []) or '?'} "
            f"identities, frozen: {ft['frozen_layers'] or 'nothing'}), both on {n_ids} {where}: "
            f"{data.get('n_images')} images, {data.get('n_genuine')} genuine and {data.get('n_impostor')} impostor "
            f"pairs. {changes}. Intervals at {level:.0%}; FNMR at each model's own threshold for FMR {target}"
            + ("; undefined values: see the evaluation's warnings." if "undefined" in changes else "."))
    if verdicts:
        joined = "; ".join(verdicts)
        text += f" {joined[0].upper()}{joined[1:]}."
    if n_ids is not None and n_ids < 30:
        text += (f" With {n_ids} evaluation identities these numbers show the pipeline at work; they are no evidence "
                 "of what fine-tuning does to age bias.")
    return text


def evaluation_warnings(results: dict[str, dict]) -> list[str]:
    """The evaluator's own plain-word warnings (tiny groups, undefined fairness measures...), de-duplicated."""
    seen: dict[str, None] = {}
    for protocol, res in results.items():
        for name in res.get("model_order", []):
            for warning in res["models"][name].get("warnings", []) or []:
                seen.setdefault(f"{name} ({protocol}): {warning}", None)
    return list(seen)


def _what_was_run(exp: Experiment, summaries: dict[str, Any]) -> list[str]:
    gen, ft = exp.section("generate"), exp.section("finetune")
    g, f, e = summaries.get("generate", {}), summaries.get("finetune", {}), summaries.get("evaluate", {})
    lines = [f"Experiment: {exp.name} ({exp.path}). {exp.section('experiment')['description']}".strip()]
    if g.get("enabled"):
        src = gen["sources"] or f"{gen['identities']} seeds"
        lines.append(f"Generate: {g.get('method')} from {src}: {g.get('identities')} identities x ages "
                     f"{', '.join(str(a) for a in g.get('ages', []))} = {g.get('images')} images.")
    elif g:
        lines.append(f"Training data: {g.get('dataset')} (no generation).")
    if f.get("enabled"):
        frozen = ft["frozen_layers"] or "nothing"
        if e.get("identities") == "held-out":
            kept = f"evaluated: the final epoch ({f.get('epochs')}), no epoch chosen on the evaluated identities"
        else:
            kept = f"evaluated: {f.get('backbone_kind')} ({f.get('best_epoch') or f.get('epochs')})"
        lines.append(f"Fine-tune: {ft['backbone']} ({ft['init']}), frozen: {frozen}, {ft['head']} head, "
                     f"{ft['optimizer']} lr {ft['lr']}, batch {ft['batch_size']}, {f.get('epochs')} epochs; {kept}.")
    if e:
        lines.append(f"Evaluate: {', '.join(e.get('models', {}))} on {e.get('dataset')} "
                     f"({e.get('images')} images, {e.get('subjects')} identities), protocols: "
                     f"{', '.join(e.get('protocols', {}))}.")
        if e.get("preparation"):
            lines.append(e["preparation"])
    return lines


def _headline(results: dict[str, dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    if "all-pairs" in results:
        res = results["all-pairs"]
        tables = result_tables(res)
        target = res.get("settings", {}).get("target_fmr")
        return [(f"{title}, target FMR {target}" if i == 0 else title, hdr, rows)
                for i, (title, hdr, rows) in enumerate(tables)]
    return [t for res in results.values() for t in result_tables(res)]


def _figures(summaries: dict[str, Any]) -> list[tuple[str, Path]]:
    found = []
    for protocol, folder in summaries.get("evaluate", {}).get("protocols", {}).items():
        plots = Path(folder) / "plots"
        pngs = sorted(plots.glob("*.png")) if plots.is_dir() else []
        pngs.sort(key=lambda p: (FIGURE_ORDER.index(p.stem) if p.stem in FIGURE_ORDER else 99, p.stem))
        found += [(f"{protocol}: {p.stem.replace('_', ' ')}", p) for p in pngs]
    sheet = summaries.get("generate", {}).get("contact_sheet")
    if sheet and Path(sheet).is_file() and not shows_contact_sheet(summaries):  # else shown labelled there
        found.append(("generated identities x ages (contact sheet)", Path(sheet)))
    return found


def _history_rows(summaries: dict[str, Any]) -> list[list[str]]:
    rows = []
    for h in summaries.get("finetune", {}).get("history", []) or []:
        rows.append([str(h.get("epoch")), fmt(h.get("loss")), fmt(h.get("lr")), fmt(h.get("val_eer")),
                     fmt(h.get("val_fnmr_at_fmr_1e-3"))])
    return rows


def write_experiment_report(exp: Experiment, out: Path, summaries: dict[str, Any]) -> dict[str, Path]:
    results = _results(summaries)
    notes = caveats(exp, summaries)
    warnings = evaluation_warnings(results)
    lines = _what_was_run(exp, summaries)
    tables = _headline(results)
    figures = _figures(summaries)
    history = _history_rows(summaries)
    change = what_changed(exp, summaries, results)
    md = _markdown(exp, out, notes, lines, tables, figures, history, summaries, warnings, change)
    page = _html(exp, notes, lines, tables, figures, history, summaries, warnings, change)
    write_text(out / "report.md", md)
    write_text(out / "report.html", page)
    return {"report_md": out / "report.md", "report_html": out / "report.html"}


_HIST_HDR = ["epoch", "loss", "lr", "val EER", "val FNMR@FMR1e-3"]


def _markdown(exp, out, notes, lines, tables, figures, history, summaries, warnings, change=None) -> str:
    parts = [f"# agebias report: {exp.name}", ""]
    if notes:
        parts += ["> **Read this first.**"] + [f"> - {n}" for n in notes] + [""]
    parts += [f"- {line}" for line in lines] + [""]
    for i, (title, hdr, rows) in enumerate(tables):
        parts += [f"## {title}", ""] + md_table(hdr, rows) + [""]
        if i == 0 and change:
            parts += ["## What changed", "", change, ""]
    if warnings:
        parts += ["## Warnings from the evaluation", ""] + [f"- {w}" for w in warnings] + [""]
    parts += quality_markdown(summaries, out)
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{title}]({p.resolve().relative_to(out.resolve()).as_posix()})" for title, p in figures]
        parts.append("")
    if history:
        parts += ["## Fine-tuning history", ""] + md_table(_HIST_HDR, history) + [""]
    reports = summaries.get("evaluate", {}).get("protocols", {})
    if reports:
        parts += ["## Full evaluation reports", ""]
        parts += [f"- {p}: {(Path(d) / 'report.md').resolve().relative_to(out.resolve()).as_posix()}"
                  for p, d in reports.items()]
    return "\n".join(parts) + "\n"


def _html(exp, notes, lines, tables, figures, history, summaries, warnings, change=None) -> str:
    e = html.escape
    css = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;"
           "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
           ".note{background:#fff4e0;border-left:4px solid #E69F00;padding:.4em 1em;margin:.6em 0}"
           "img{max-width:100%;margin:.4em 0}figure{margin:1em 0}figcaption{font-size:13px;color:#555}")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>agebias report: {e(exp.name)}</title>"
           f"<style>{css}</style></head><body><h1>agebias report: {e(exp.name)}</h1>"]
    if notes:
        out.append("<div class='note'><strong>Read this first.</strong><ul>"
                   + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul></div>")
    out.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in lines) + "</ul>")
    for i, (title, hdr, rows) in enumerate(tables):
        out.append(f"<h2>{e(title)}</h2>" + html_table(hdr, rows))
        if i == 0 and change:
            out.append(f"<h2>What changed</h2><p>{e(change)}</p>")
    if warnings:
        out.append("<h2>Warnings from the evaluation</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in warnings)
                   + "</ul>")
    out += quality_html(summaries)
    if figures:
        out.append("<h2>Figures</h2>")
        out += [html_figure(title, path) for title, path in figures]
    if history:
        out.append("<h2>Fine-tuning history</h2>" + html_table(_HIST_HDR, history))
    skipped = summaries.get("evaluate", {}).get("skipped", [])
    if skipped:
        out.append("<h2>Skipped files</h2><ul>" + "".join(f"<li>{e(s['path'])}: {e(s['reason'])}</li>"
                                                          for s in skipped) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)
