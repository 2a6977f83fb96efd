"""`agebias evaluate`: fgnet, dataset, scores and bin sub-commands (thin layer over agebias.evaluate)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from agebias.cli.interrupt import on_interrupt
from agebias.cli.messages import report_skipped
from agebias.cli.options import with_settings
from agebias.data.fgnet import DEFAULT_ROOT as FGNET_ROOT
from agebias.errors import DataError, SettingsError
from agebias.evaluate.settings import EmbedSettings, EvalSettings

log = logging.getLogger(__name__)

evaluate_app = typer.Typer(help="Measure verification accuracy and age bias (pinned metrics, plots, reports).",
                           no_args_is_help=True)


def _out_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise SettingsError(f"--out {path} is a file; give a folder for results.json, plots and reports")


def _json_file(path: Path | None) -> None:
    if path is not None and path.is_dir():
        raise SettingsError(f"--json {path} is a folder; give a file name such as {path / 'results.json'}")


def _num(v, fmt: str = ".4f") -> str:
    return "n/a" if v is None or v != v else format(v, fmt)


def _operating_point(o: dict) -> str:
    """'at tau 0.4014 (target FMR 0.001): FMR 0.000, FNMR 0.0333' (no target when a fixed --threshold was used)."""
    target = f" (target FMR {o['target_fmr']:g})" if o.get("target_fmr") is not None else ""
    return (f"at tau {_num(o.get('threshold'))}{target}: FMR {_num(o.get('fmr'), '.2g')}, "
            f"FNMR {_num(o.get('fnmr'))}")


def _summary(results: dict, out: Path) -> int:
    for name in results["model_order"]:
        sec = results["models"][name]
        o = sec.get("overall", {})
        f = sec.get("fairness", {})
        if "eer" in o:
            log.info(f"{name}: {_operating_point(o)}  EER {_num(o['eer'])}  GARBE {_num(f.get('garbe'))}  "
                     f"FDR {_num(f.get('fdr'))}")
    log.info(f"wrote {out / 'results.json'}, {out / 'report.html'}")
    return report_skipped(results["dataset"]["skipped"], f"{out / 'results.json'} (dataset.skipped)")


def _evaluate_into(out: Path, source: Path, kind: str, models: list[str], embeddings: list[Path],
                   settings: EvalSettings, embed: EmbedSettings, plots: bool) -> int:
    """Evaluate ``source`` (resumable: embeddings cached in ``out/embeddings``), save every output in ``out`` and
    print the summary; returns the exit code."""
    from agebias.evaluate.runner import evaluate_source

    _out_dir(out)
    on_interrupt(f"the embeddings of the models finished so far are cached in {out / 'embeddings'}, and the same "
                 f"command reuses them")
    result = evaluate_source(source, kind=kind, models=models, embeddings=embeddings, settings=settings, embed=embed,
                             cache_dir=out / "embeddings")
    result.save(out, plots=plots)
    return _summary(result.to_dict(), out)


_MODEL_HELP = "Model spec (.pth/.safetensors/.onnx file or a name such as sface); repeat to compare models."
_EMB_HELP = ".npz from 'agebias embed' (paths, embeddings) instead of --model; repeat for several models."


@evaluate_app.command("dataset", help="Evaluate a dataset (manifest CSV, generated set or folder) with models or "
                                      "precomputed embeddings.")
@with_settings(settings=EvalSettings, embed=EmbedSettings)
def dataset_cmd(
    settings: EvalSettings,
    embed: EmbedSettings,
    source: Path = typer.Argument(..., help="Manifest CSV or dataset folder."),
    model: List[str] = typer.Option([], "--model", "-m", help=_MODEL_HELP),
    embeddings: List[Path] = typer.Option([], "--embeddings", "-e", help=_EMB_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    kind: str = typer.Option("auto", "--kind", help="Dataset kind: auto, fgnet, manifest, generated, agedb, folder."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
) -> int:
    return _evaluate_into(out, source, kind, model, embeddings, settings, embed, plots=not no_plots)


@evaluate_app.command("fgnet", help="Evaluate models on FG-NET (see datasets/README.md for where to get it).")
@with_settings(settings=EvalSettings, embed=EmbedSettings)
def fgnet_cmd(
    settings: EvalSettings,
    embed: EmbedSettings,
    root: Path = typer.Option(Path(FGNET_ROOT), "--root", help="FG-NET folder."),
    model: List[str] = typer.Option([], "--model", "-m", help=_MODEL_HELP),
    embeddings: List[Path] = typer.Option([], "--embeddings", "-e", help=_EMB_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
) -> int:
    if not root.exists():
        from agebias.data.fgnet import FGNET_HELP

        raise DataError(f"FG-NET not found at {root}. {FGNET_HELP}")
    return _evaluate_into(out, root, "fgnet", model, embeddings, settings, embed, plots=not no_plots)


@evaluate_app.command("scores", help="Metrics from any system's scores: CSV with columns score, genuine (1/0) and "
                                     "optionally a group column.")
@with_settings(settings=EvalSettings, include=("target_fmr", "threshold", "alpha", "fmr_targets"))
def scores_cmd(
    settings: EvalSettings,
    path: Path = typer.Argument(..., help="CSV file."),
    json_out: Path = typer.Option(..., "--json", help="Write the results here."),
    group_column: str = typer.Option("group", "--group-column", help="Column with the group name (optional)."),
) -> int:
    from agebias.atomic import write_json
    from agebias.evaluate.api import evaluate_scores

    _json_file(json_out)
    res = evaluate_scores(path, group_column, settings.target_fmr, settings.threshold, settings.alpha,
                          settings.fmr_targets)
    write_json(json_out, res)
    o = res["overall"]
    log.info(f"tau {_num(o['threshold'], '.6g')}: FMR {_num(o['fmr'])} FNMR {_num(o['fnmr'])} EER {_num(o['eer'])}"
             + (f" GARBE {_num(res['fairness']['garbe'])}" if "fairness" in res else ""))
    return _report_skipped_rows(res["skipped_rows"], path)


def _report_skipped_rows(bad: list[dict], path: Path) -> int:
    """Exit 1 with the count and the first bad rows on the terminal when some rows were not usable."""
    if not bad:
        return 0
    shown = "; ".join(f"line {b['line']}: {b['reason']}" for b in bad[:5])
    log.warning(f"{len(bad)} row(s) of {path} skipped ({shown}{'; ...' if len(bad) > 5 else ''}); all of them "
                f"are listed under skipped_rows in the JSON")
    return 1


@evaluate_app.command("bin", help="insightface 10-fold verification on a .bin set (LFW, AgeDB-30, CALFW, ...); "
                                  "embeddings are always fused with the mirrored face, as insightface does.")
@with_settings(embed=EmbedSettings, include=("batch_size", "device", "backend", "arch", "trust_checkpoint"))
def bin_cmd(
    embed: EmbedSettings,
    path: Path = typer.Argument(..., help=".bin file (pickle of images and issame flags, read safely)."),
    model: List[str] = typer.Option(..., "--model", "-m", help=_MODEL_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
) -> int:
    from agebias.atomic import write_json
    from agebias.evaluate.verification_bin import evaluate_bin

    _json_file(json_out)
    res = evaluate_bin(path, model, embed)
    for name, r in res["models"].items():
        log.info(f"{name}: accuracy {r['accuracy_mean'] * 100:.2f} +- {r['accuracy_std'] * 100:.2f} %")
    if json_out:
        write_json(json_out, res)
    return 0


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
