"""`agebias search`: multi-objective architecture / hyper-parameter / mitigation search (Optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agebias.cli.options import with_settings
from agebias.search.settings import SearchSettings


def register(app: typer.Typer) -> None:
    @app.command("search")
    @with_settings(overrides=True, given=SearchSettings)
    def search(
        given: dict,
        experiment: Path = typer.Argument(..., help="Search experiment file, e.g. experiments/search_demo.toml."),
        study: Optional[str] = typer.Option(None, "--study", help="Study name (default: experiment.name in the file)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder: trials/, pareto.json, pareto.png "
                                           "(default: experiment.out in the file)."),
    ) -> int:
        """Run trials (fine-tune + evaluate each) of a multi-objective study; start the same command on several
        machines with one --storage URL to share the work. Options not given take the search file's [search]
        values. Writes OUT/pareto.json and OUT/pareto.png after every trial. Exit code 1 when a trial of this
        worker failed (recorded as FAIL in the study)."""
        from agebias.search.experiment import load_search_experiment
        from agebias.search.study import run_search

        exp = load_search_experiment(experiment)
        exp.search = exp.search.replace(**given)
        summary = run_search(exp, study_name=study, out=out, seed=exp.search.seed)
        typer.echo(f"pareto: {summary.pareto_path}")
        typer.echo(f"plot:   {summary.plot_path}")
        if summary.failed:
            typer.echo(f"{summary.failed} of {summary.trials_run} trial(s) failed; reasons in "
                       f"{summary.out}/trials/<n>/error.txt", err=True)
            return 1
        return 0
