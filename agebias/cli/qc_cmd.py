"""`agebias qc GENERATED_DIR [--out DIR] [--model SPEC]`: quality control of a generated set (see
:mod:`generators.qc`): apparent age against target age, identity kept, faces found; qc.csv, qc.json and figures."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from agebias.cli.messages import report_skipped
from agebias.cli.options import with_settings
from generators.settings import QCSettings

log = logging.getLogger(__name__)

_HELP = (
    "Quality control of a generated set (<id>/<id>_<age>.png): did the generator produce the ages asked for, and "
    "keep each identity?\n\n"
    "Writes qc.csv (one row per image: target age, apparent age, identity similarity, face found), qc.json (age MAE, "
    "Pearson r, per-target-age rows, identity similarity by target age and by age gap, a verdict) and figures. The "
    "set's own files are not changed.\n\n"
    "Exit 1 when some images were rejected (no face, or identity similarity below --min-similarity); the first "
    "reasons are shown.\n\n"
    "Example:  agebias qc runs/demo/generate/data --out qc/")


def register(app: typer.Typer) -> None:
    @app.command("qc", help=_HELP)
    @with_settings(settings=QCSettings)
    def qc(settings: QCSettings,
           data: Path = typer.Argument(..., help="The generated set (the folder with manifest.csv).")) -> int:
        from generators.qc import qc_generated_set

        result = qc_generated_set(data, settings)
        log.info(result.summary["verdict"])
        log.info(f"QC of {result.checked} image(s), {result.rejected} rejected -> {result.folder}")
        return report_skipped(result.summary["rejected_images"], f"{result.csv} (columns accepted, reason)")
