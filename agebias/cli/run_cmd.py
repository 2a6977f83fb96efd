"""`agebias run EXPERIMENT.toml`: the whole study from one file, each stage resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        experiment: Path = typer.Argument(..., help="Experiment file, e.g. experiments/demo.toml."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the file's \\[experiment] out)."),
        from_stage: Optional[str] = typer.Option(None, "--from", help="Re-run this stage and all later ones: "
                                                 "generate, finetune, evaluate, report."),
        only: Optional[str] = typer.Option(None, "--only", help="Run just this stage (earlier ones must be done)."),
    ) -> int:
        """Run generate -> finetune -> evaluate -> report. Stages whose outputs are complete and whose settings
        are unchanged are skipped, so an interrupted run continues where it stopped."""
        from agebias.pipeline import load_experiment, run_experiment

        exp = load_experiment(experiment)
        out_dir = run_experiment(exp, out=out, from_stage=from_stage, only=only)
        report = out_dir / "report.html"
        if report.exists():
            typer.echo(f"report: {report.resolve()}")
            typer.echo(f"        {(out_dir / 'report.md').resolve()}")
        return 0
