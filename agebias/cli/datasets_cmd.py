"""`agebias datasets check KIND --root DIR`: subjects, images, images per age bin and problems of a dataset
(missing, empty and corrupt files: a sample of the images is decoded, all of them with ``--deep``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from agebias.data.fgnet import DEFAULT_ROOT as FGNET_ROOT
from agebias.data.summary import DECODE_SAMPLE

SHOWN = 20  # problems listed on the terminal (--json lists all)
DEFAULT_ROOTS = {"fgnet": Path(FGNET_ROOT), "agedb": Path("datasets/agedb")}


def register(app: typer.Typer) -> None:
    datasets = typer.Typer(help="Inspect face datasets (FG-NET, AgeDB, manifests, generated sets, folders).",
                           no_args_is_help=True)
    app.add_typer(datasets, name="datasets")

    @datasets.command("check")
    def check(
        kind: str = typer.Argument(..., help="fgnet | agedb | manifest | generated | folder | auto"),
        root: Optional[Path] = typer.Option(None, "--root", "-r",
                                            help="Dataset folder or manifest CSV (default for fgnet and agedb: "
                                                 "datasets/fgnet, datasets/agedb)."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (every problem)."),
        deep: bool = typer.Option(False, "--deep", help=f"Decode every image (default: a sample of {DECODE_SAMPLE})."),
    ) -> int:
        """Scan a dataset and print what was found. Exit 0 clean, 1 problems found, 2 root missing or without
        images."""
        from agebias.data.fgnet import FGNET_HELP
        from agebias.data.sources import open_dataset
        from agebias.data.summary import summarize
        from agebias.errors import UserError

        path = root if root is not None else DEFAULT_ROOTS.get(kind.lower())
        if path is None:
            raise UserError(f"pass --root DIR for dataset kind {kind!r}")
        if not path.exists():
            hint = FGNET_HELP if kind.lower() == "fgnet" else "see datasets/README.md for where to get it"
            raise UserError(f"{kind} root {path} not found. {hint}")
        summary = summarize(open_dataset(path, kind), sample=None if deep else DECODE_SAMPLE)
        if summary.images == 0 and not summary.problems:
            hint = FGNET_HELP if kind.lower() == "fgnet" else "See datasets/README.md for the layouts agebias reads."
            raise UserError(f"no face images found in {path} (dataset kind {kind}). {hint}")
        if as_json:
            typer.echo(json.dumps(summary.as_dict(), indent=2))
        else:
            _print_summary(summary)
        return 1 if summary.problems else 0


def _print_summary(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    console.print(f"[bold]{summary.name}[/bold] at {summary.root}")
    console.print(f"subjects: {summary.subjects}   images: {summary.images}   "
                  f"with landmarks: {summary.with_landmarks}   decoded: {_decoded(summary)}   "
                  f"problems: {len(summary.problems)}")
    table = Table(title="images per age bin")
    table.add_column("age (years)")
    table.add_column("images", justify="right")
    for label, n in summary.per_age_bin.items():
        table.add_row(label, str(n))
    console.print(table)
    _print_problems(summary, typer.echo)


def _decoded(summary) -> str:
    return "all" if summary.decoded == summary.images else f"{summary.decoded} (--deep: all)"


def _print_problems(summary, echo) -> None:
    """The count, the first :data:`SHOWN` problems with their reasons, and where the full list is."""
    if not summary.problems:
        return
    echo(f"problems: {len(summary.problems)} (paths relative to {summary.root})")
    for p in summary.problems[:SHOWN]:
        echo(f"  {_relative(p['path'], summary.root)}: {p['reason']}")
    if len(summary.problems) > SHOWN:
        echo(f"  ... and {len(summary.problems) - SHOWN} more (--json lists them all)")


def _relative(path: str, root: str) -> str:
    import os

    try:
        rel = os.path.relpath(path, root)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
