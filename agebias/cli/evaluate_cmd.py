"""`agebias evaluate`: fgnet, dataset, scores and bin sub-commands (thin layer over agebias.evaluate)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from agebias.errors import UserError

log = logging.getLogger(__name__)

evaluate_app = typer.Typer(help="Measure verification accuracy and age bias (pinned metrics, plots, reports).",
                           no_args_is_help=True)


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{what}: expected numbers separated by commas, got {text!r}") from None


def _settings(protocol, target_fmr, threshold, alpha, age_bins, pair_grouping, gap_bins, bootstrap, formats,
              identification, seed, block):
    from agebias.evaluate.grouping import AgeBins
    from agebias.evaluate.settings import EvalSettings

    fmts = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
    for f in fmts:
        if f not in ("png", "pdf", "svg"):
            raise UserError(f"--format {f!r}: choose from png, pdf, svg")
    if not (0 < target_fmr < 1):
        raise UserError("--target-fmr must be between 0 and 1")
    if not (0 <= alpha <= 1):
        raise UserError("--alpha must be between 0 and 1")
    if identification not in ("auto", "on", "off"):
        raise UserError("--identification must be auto, on or off")
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be >= 0 (0 = off), got {bootstrap}")
    if block < 1:
        raise UserError(f"--block must be >= 1, got {block}")
    AgeBins.parse(age_bins)
    AgeBins.parse(gap_bins)
    return EvalSettings(protocol=protocol, target_fmr=target_fmr, threshold=threshold, alpha=alpha,
                        age_bins=age_bins, pair_grouping=pair_grouping, gap_bins=gap_bins, bootstrap=bootstrap,
                        formats=fmts or ("png",), identification=identification, seed=seed, block=block)


def _out_dir(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file; give a folder for results.json, plots and reports")
    return path


def _out_file(path: Path | None, flag: str = "--json") -> Path | None:
    if path is not None and path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name such as {path / 'results.json'}")
    return path


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
    return 1 if results["dataset"]["skipped"] else 0


@evaluate_app.command("dataset", help="Evaluate a dataset (manifest CSV or folder) with models or precomputed "
                                      "embeddings.")
def dataset_cmd(
    source: Path = typer.Argument(..., help="Manifest CSV or dataset folder."),
    model: List[str] = typer.Option([], "--model", "-m", help="Model spec (.pth/.onnx/.safetensors or name); repeat "
                                                              "to compare models."),
    embeddings: List[Path] = typer.Option([], "--embeddings", "-e", help=".npz from 'agebias embed' (paths, "
                                                                         "embeddings); repeat for several models."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    kind: str = typer.Option("auto", "--kind", help="Dataset kind: auto, fgnet, manifest, generated, agedb, folder."),
    protocol: str = typer.Option("all-pairs", "--protocol", help="all-pairs (default) or msc (the legacy thesis "
                                                                 "evaluation)."),
    target_fmr: float = typer.Option(1e-3, "--target-fmr", help="Global operating point (FMR)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Fixed threshold instead of --target-fmr."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of FMR in GARBE/FDR/IR."),
    age_bins: str = typer.Option("0-12,13-19,20-39,40-69", "--age-bins", help="Age groups, e.g. 0-12,13-19,20+."),
    pair_grouping: str = typer.Option("both", "--pair-grouping", help="both | mean | gap."),
    gap_bins: str = typer.Option("0-5,6-10,11-20,21+", "--gap-bins", help="Age-gap bins."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Subject resamples for GARBE/FDR intervals (0 = off)."),
    formats: str = typer.Option("png", "--format", help="Plot formats: png,pdf,svg."),
    identification: str = typer.Option("auto", "--identification", help="auto (<= 20000 images) | on | off."),
    detector: str = typer.Option("auto", "--detector", help="Face alignment: auto, mtcnn, landmarks, none."),
    aligned: bool = typer.Option(False, "--aligned", help="Images are already aligned 112x112 crops."),
    flip: bool = typer.Option(False, "--flip", help="Fuse each embedding with its mirror image's."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ..."),
    batch_size: int = typer.Option(64, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
    block: int = typer.Option(2048, "--block", help="Tile size of the blocked score computation."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
) -> int:
    from agebias.evaluate.runner import evaluate_source

    st = _settings(protocol, target_fmr, threshold, alpha, age_bins, pair_grouping, gap_bins, bootstrap, formats,
                   identification, seed, block)
    _out_dir(out)
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    res = evaluate_source(source, kind, out, st, models=model, embeddings=[str(e) for e in embeddings],
                          detector=detector, aligned=aligned, flip=flip, device=device, batch_size=batch_size,
                          plots=not no_plots)
    return _summary(res, out)


@evaluate_app.command("fgnet", help="Evaluate models on FG-NET (see datasets/README.md for where to get it).")
def fgnet_cmd(
    root: Path = typer.Option(Path("datasets/fgnet"), "--root", help="FG-NET folder."),
    model: List[str] = typer.Option([], "--model", "-m", help="Model spec; repeat to compare models."),
    embeddings: List[Path] = typer.Option([], "--embeddings", "-e", help="Precomputed .npz instead of --model."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    protocol: str = typer.Option("all-pairs", "--protocol", help="all-pairs (default) or msc (legacy)."),
    target_fmr: float = typer.Option(1e-3, "--target-fmr", help="Global operating point (FMR)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Fixed threshold instead of --target-fmr."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of FMR in GARBE/FDR/IR."),
    age_bins: str = typer.Option("0-12,13-19,20-39,40-69", "--age-bins", help="Age groups, e.g. 0-12,13-19,20+."),
    pair_grouping: str = typer.Option("both", "--pair-grouping", help="both | mean | gap."),
    gap_bins: str = typer.Option("0-5,6-10,11-20,21+", "--gap-bins", help="Age-gap bins."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Subject resamples for GARBE/FDR intervals (0 = off)."),
    formats: str = typer.Option("png", "--format", help="Plot formats: png,pdf,svg."),
    identification: str = typer.Option("auto", "--identification", help="auto (<= 20000 images) | on | off."),
    detector: str = typer.Option("auto", "--detector", help="Face alignment: auto (.pts landmarks when present, "
                                                            "else mtcnn), mtcnn, landmarks, none."),
    flip: bool = typer.Option(False, "--flip", help="Fuse each embedding with its mirror image's."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ..."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
) -> int:
    from agebias.evaluate.runner import evaluate_source

    if not root.exists():
        from agebias.data.fgnet import FGNET_HELP

        raise UserError(f"FG-NET not found at {root}. {FGNET_HELP}")
    st = _settings(protocol, target_fmr, threshold, alpha, age_bins, pair_grouping, gap_bins, bootstrap, formats,
                   identification, seed, 2048)
    _out_dir(out)
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    res = evaluate_source(root, "fgnet", out, st, models=model, embeddings=[str(e) for e in embeddings],
                          detector=detector, flip=flip, device=device, batch_size=batch_size, plots=not no_plots)
    return _summary(res, out)


@evaluate_app.command("scores", help="Metrics from any system's scores: CSV with columns score, genuine (1/0) and "
                                     "optionally a group column.")
def scores_cmd(
    path: Path = typer.Argument(..., help="CSV file."),
    json_out: Path = typer.Option(..., "--json", help="Write the results here."),
    group_column: str = typer.Option("group", "--group-column", help="Column with the group name (optional)."),
    target_fmr: float = typer.Option(1e-3, "--target-fmr"),
    threshold: Optional[float] = typer.Option(None, "--threshold"),
    alpha: float = typer.Option(0.5, "--alpha"),
) -> int:
    from agebias.atomic import write_json
    from agebias.evaluate.api import evaluate_scores

    if threshold is None and not (0 < target_fmr < 1):
        raise UserError("--target-fmr must be between 0 and 1")
    if not (0 <= alpha <= 1):
        raise UserError("--alpha must be between 0 and 1")
    _out_file(json_out)
    res = evaluate_scores(path, group_column, target_fmr, threshold, alpha)
    write_json(json_out, res)
    o = res["overall"]
    log.info(f"tau {o['threshold']:.6g}: FMR {o['fmr']:.4g} FNMR {o['fnmr']:.4g} EER {o['eer']:.4g}"
         + (f" GARBE {res['fairness']['garbe']:.4g}" if "fairness" in res else ""))
    return 1 if res["skipped_rows"] else 0


@evaluate_app.command("bin", help="insightface 10-fold verification on a .bin set (LFW, AgeDB-30, CALFW, ...).")
def bin_cmd(
    path: Path = typer.Argument(..., help=".bin file (pickle of images and issame flags, read safely)."),
    model: List[str] = typer.Option(..., "--model", "-m", help="Model spec; repeat to compare."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results here."),
    device: Optional[str] = typer.Option(None, "--device"),
    batch_size: int = typer.Option(64, "--batch-size"),
) -> int:
    from agebias.atomic import write_json
    from agebias.evaluate.verification_bin import evaluate_bin

    _out_file(json_out)
    res = evaluate_bin(path, model, device=device, batch_size=batch_size)
    for name, r in res["models"].items():
        log.info(f"{name}: accuracy {r['accuracy_mean'] * 100:.2f} +- {r['accuracy_std'] * 100:.2f} %")
    if json_out:
        write_json(json_out, res)
    return 0


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
