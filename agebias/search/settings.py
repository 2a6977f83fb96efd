"""Settings of a search worker (:class:`SearchSettings`): the ``[search]`` table of a search file and the options
of ``agebias search`` that override it (``--trials``, ``--storage``, ``--sampler``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from agebias.settings import Settings, at_least, setting


@dataclass
class SearchSettings(Settings):
    stage = "search"

    sampler: str = setting("nsga2", help="Optuna sampler: nsga2 (multi-objective genetic) or tpe",
                           choices=("nsga2", "tpe"))
    trials: int = setting(10, help="trials this worker runs", short="-n", check=at_least(0))
    heartbeat: int = setting(60, help="seconds between a running trial's heartbeats; trials of a killed worker are "
                                      "failed after two missed beats (0 = off)", check=at_least(0))
    population: int | None = setting(None, help="NSGA-II population size (default 50)", check=at_least(2))
    storage: str | None = setting(None, help="Optuna storage URL shared by all workers, e.g. "
                                             "postgresql+psycopg://user@host/db (default sqlite:///OUT/study.db)")
    seed: int | None = setting(None, help="sampler seed (default: random, so that parallel workers propose "
                                          "different trials)", check=at_least(0))
