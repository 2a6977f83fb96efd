"""`agebias search`: multi-objective architecture / hyper-parameter / mitigation search (Optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agebias.cli.interrupt import on_interrupt
from agebias.cli.messages import SHOWN
from agebias.cli.options import with_settings
from agebias.search.settings import SearchSettings

_HELP = (
    "Run trials (fine-tune + evaluate each) of a multi-objective study.\n\n"
    "Start the same command on several machines with one --storage URL to share the work. Options not given take "
    "the search file's \\[search] values. Writes OUT/pareto.json and OUT/pareto.png after every trial.\n\n"
    "Exit code 1 when a trial of this worker failed (recorded as FAIL in the study; the first reasons are shown).")


def register(app: typer.Typer) -> None:
    @app.command("search", help=_HELP)
    @with_settings(overrides=True, given=SearchSettings)
    def search(
        given: dict,
        experiment: Path = typer.Argument(..., help="Search experiment file, e.g. experiments/search_demo.toml."),
        study: Optional[str] = typer.Option(None, "--study", help="Study name (default: experiment.name in the file)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder: trials/, pareto.json, pareto.png "
                                           "(default: experiment.out in the file)."),
    ) -> int:
        from agebias.search.experiment import load_search_experiment
        from agebias.search.study import run_search

        exp = load_search_experiment(experiment)
        exp.search = exp.search.replace(**given)
        on_interrupt("the trials finished so far are recorded in the study, and the same command continues it")
        before = error_files(Path(out) if out is not None else exp.out)
        summary = run_search(exp, study_name=study, out=out)
        typer.echo(f"pareto: {summary.pareto_path}")
        typer.echo(f"plot:   {summary.plot_path}")
        if summary.failed:
            typer.echo(f"{summary.failed} of {summary.trials_run} trial(s) failed; reasons in "
                       f"{summary.out}/trials/<n>/error.txt", err=True)
            for error in failed_since(summary.out, before)[:SHOWN]:
                typer.echo(f"  trial {error.parent.name}: {error.read_text(encoding='utf-8').splitlines()[0]}",
                           err=True)
            return 1
        return 0


def error_files(out: Path) -> dict[Path, int]:
    """Each trial's error.txt in ``out`` with its modification time (ns)."""
    return {p: p.stat().st_mtime_ns for p in out.glob("trials/*/error.txt")}


def failed_since(out: Path, before: dict[Path, int]) -> list[Path]:
    """The error.txt files written in ``out`` since ``before`` was taken (new, or rewritten), oldest first. (Compared
    with the files themselves, not the clock: a file's time comes from the kernel's coarser clock and can read a
    few ms earlier than ``time.time()`` taken before it was written.)"""
    now = error_files(out)
    return sorted((p for p, t in now.items() if before.get(p) != t), key=now.__getitem__)
