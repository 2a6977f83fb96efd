"""`agebias run EXPERIMENT.toml`: the whole study from one file, each stage resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agebias.cli.interrupt import on_interrupt
from agebias.cli.messages import read_skipped_csv, report_skipped

_HELP = (
    "Run generate -> finetune -> evaluate -> report from one experiment file.\n\n"
    "Stages whose outputs are complete and whose settings are unchanged are skipped, so an interrupted run continues "
    "where it stopped.\n\n"
    "Exit code 1 when a stage left input files out (the first few are shown, with where each stage lists them all).")


def register(app: typer.Typer) -> None:
    @app.command("run", help=_HELP)
    def run(
        experiment: Path = typer.Argument(..., help="Experiment file, e.g. experiments/demo.toml."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the file's \\[experiment] out)."),
        from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run this stage and all later ones: "
                                                 "generate, finetune, evaluate, report."),
        only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (earlier ones must be done)."),
    ) -> int:
        from agebias.pipeline import load_experiment, run_experiment
        from agebias.pipeline.runner import output_dir

        exp = load_experiment(experiment)
        on_interrupt(f"finished stages, generated images, checkpointed epochs and cached embeddings are kept in "
                     f"{output_dir(exp, out)}")
        out_dir = run_experiment(exp, out=out, from_stage=from_stage, only=only)
        report = out_dir / "report.html"
        if report.exists():
            typer.echo(f"report: {report.resolve()}")
            typer.echo(f"        {(out_dir / 'report.md').resolve()}")
        return max([0, *(report_skipped(items, where) for items, where in skipped_by_stage(out_dir))])


def skipped_by_stage(out_dir: Path) -> list[tuple[list[dict], str]]:
    """``(skipped inputs, where they are listed)`` of every stage of a finished run that left inputs out."""
    from agebias.pipeline.state import read_state

    found = []
    for stage in ("generate", "evaluate"):
        summary = (read_state(out_dir / stage) or {}).get("summary") or {}
        if summary.get("skipped"):
            found.append((summary["skipped"], f"{out_dir / stage / 'stage.json'} (summary.skipped)"))
    run_dir = ((read_state(out_dir / "finetune") or {}).get("summary") or {}).get("run_dir")
    if run_dir:
        listed = Path(run_dir) / "skipped.csv"
        skipped = read_skipped_csv(listed)
        if skipped:
            found.append((skipped, str(listed)))
    return found
