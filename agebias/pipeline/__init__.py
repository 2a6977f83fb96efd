"""Experiment files tie the stages together: ``agebias run experiments/demo.toml``."""

from agebias.pipeline.schema import Experiment, load_experiment

__all__ = ["Experiment", "load_experiment", "run_experiment"]


def run_experiment(*args, **kwargs):
    from agebias.pipeline.runner import run_experiment as _run

    return _run(*args, **kwargs)
