"""`agebias search`: multi-objective architecture / hyper-parameter / mitigation search (Optuna)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search(
        experiment: Path = typer.Argument(..., help="Search experiment file, e.g. experiments/search_demo.toml."),
        trials: Optional[int] = typer.Option(None, "--trials", "-n", help="Trials this worker runs (default: "
                                             "search.trials in the file)."),
        storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL shared by all workers, e.g. "
                                              "postgresql://user@host/db (default: sqlite:///OUT/study.db)."),
        study: Optional[str] = typer.Option(None, "--study", help="Study name (default: experiment.name in the file)."),
        out: Optional[Path] = typer.Option(None, "--out", help="Output folder: trials/, pareto.json, pareto.png "
                                           "(default: experiment.out in the file)."),
        sampler: Optional[str] = typer.Option(None, "--sampler", help="nsga2 or tpe (default: search.sampler in "
                                              "the file, else "
                                              "nsga2)."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Sampler seed (default: random, so that parallel "
                                           "workers propose different trials)."),
        heartbeat: Optional[int] = typer.Option(None, "--heartbeat", help="Seconds between a running trial's "
                                                "heartbeats; trials of killed workers are failed after two missed "
                                                "beats (0 = off; default: search.heartbeat in the file, else 60)."),
    ) -> int:
        """Run trials (fine-tune + evaluate each) of a multi-objective study; start the same command on several
        machines with one --storage URL to share the work. Writes OUT/pareto.json and OUT/pareto.png after every
        trial. Exit code 1 when a trial of this worker failed (recorded as FAIL in the study)."""
        from agebias.search.experiment import load_search_experiment
        from agebias.search.study import run_search

        exp = load_search_experiment(experiment)
        summary = run_search(exp, trials, storage=storage, study_name=study, out=out, sampler=sampler, seed=seed,
                             heartbeat=heartbeat)
        typer.echo(f"pareto: {summary.pareto_path}")
        typer.echo(f"plot:   {summary.plot_path}")
        if summary.failed:
            typer.echo(f"{summary.failed} of {summary.trials_run} trial(s) failed; reasons in "
                       f"{summary.out}/trials/<n>/error.txt", err=True)
            return 1
        return 0
