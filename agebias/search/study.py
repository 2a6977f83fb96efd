"""``agebias search``: an Optuna multi-objective study over finetune + evaluate trials.

- Storage: any Optuna RDB URL (``sqlite:///path.db``, ``postgresql+psycopg://user:pw@host/db`` with the
  ``postgres`` extra, ``mysql://...``); default ``sqlite:///<out>/study.db``. Logs, messages and params.json show
  the URL with ``***`` for its password (:func:`display_url`). Many workers (processes, machines) may join one
  study by using the same URL and study name; each runs its own ``--trials`` trials. SQLite gets a 60 s lock
  timeout, and the creation of the schema and of the study is retried, so workers started at the same moment on
  one file all proceed.
- Each trial: parameters from the search space, then ``trial_fn`` (default :func:`agebias.search.trial.run_trial`:
  fine-tune, then embed and score) in ``<out>/trials/<number>/`` (kept: params.json, the run directory,
  objectives.json, error.txt for a failed trial).
- A trial that raises is recorded as FAIL with its reason (user attribute ``error``); the worker goes on.
- With ``heartbeat > 0`` every running trial beats every ``heartbeat`` seconds; a trial whose worker was killed
  stops beating and is marked FAIL by the next worker that starts or begins a trial (after ``2 * heartbeat``).
  Without a heartbeat a killed worker's trial stays RUNNING; the study remains usable either way.
- After every trial (and at start and end) the worker rewrites ``<out>/pareto.json`` and ``<out>/pareto.png``
  atomically from the storage, so the files describe the whole study, whichever worker wrote last (the figure:
  :mod:`agebias.search.pareto_plot`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agebias.atomic import write_json, write_text
from agebias.errors import UserError
from agebias.search.experiment import SearchExperiment
from agebias.search.pareto_plot import completed_trials, plot_pareto

log = logging.getLogger(__name__)

TrialFn = Callable[[SearchExperiment, dict[str, Any], Path], dict[str, float]]
SQLITE_TIMEOUT_S = 60


@dataclass
class SearchSummary:
    study_name: str
    storage: str
    out: Path
    trials_run: int
    failed: int
    pareto_path: Path
    plot_path: Path


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _retry(fn: Callable[[], Any], what: str, attempts: int = 8) -> Any:
    """Run ``fn`` again after a short random pause when two workers race on schema or study creation."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for i in range(attempts):
        try:
            return fn()
        except (IntegrityError, OperationalError) as err:
            if i == attempts - 1:
                raise UserError(f"{what} failed after {attempts} attempts: {str(err).splitlines()[0]}") from None
            time.sleep(0.2 + random.random() * (0.5 + i))


def display_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs, messages and params.json."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:  # not parseable: show the scheme only, the rest may hold a password
        return url.split("://", 1)[0] + "://..."
    # without a password the URL is shown as given (rendering would percent-encode e.g. a SQLite path's ':')
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def open_storage(url: str, heartbeat: int = 0):
    """An Optuna RDB storage for ``url`` (SQLite with a lock timeout); ``heartbeat`` seconds, 0 = off."""
    import optuna

    if "://" not in url:
        raise UserError(f"storage '{url}' is not a database URL (e.g. sqlite:///study.db, postgresql://host/db)")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat > 0:
        kwargs.update(heartbeat_interval=int(heartbeat), grace_period=2 * int(heartbeat))
    try:
        return _retry(lambda: optuna.storages.RDBStorage(url, **kwargs), f"opening storage {display_url(url)}")
    except (ImportError, ModuleNotFoundError) as err:
        raise UserError(f"storage {display_url(url)}: database driver missing ({err}); for PostgreSQL install "
                        f"agebias[postgres] and use postgresql+psycopg://...") from None


def make_sampler(kind: str, seed: int | None, population: int | None = None):
    import optuna

    if kind == "nsga2":
        kw = {"population_size": population} if population else {}
        return optuna.samplers.NSGAIISampler(seed=seed, **kw)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise UserError(f"unknown sampler '{kind}': choose nsga2 or tpe")


def open_study(storage, name: str, n_objectives: int, sampler):
    """Create the study or load it (two workers may race here; the loser loads the winner's study)."""
    import optuna

    directions = ["minimize"] * n_objectives

    def create():
        try:
            return optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                       load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=name, storage=storage, sampler=sampler)

    study = _retry(create, f"creating study '{name}'")
    if len(study.directions) != n_objectives:
        raise UserError(f"study '{name}' in this storage has {len(study.directions)} objectives, the experiment "
                        f"{n_objectives}; use another --study name")
    return study


# ---- Pareto front ------------------------------------------------------------------------------------------------

def pareto_front(trials: list, n_obj: int) -> list:
    """Non-dominated COMPLETE trials (all objectives minimised), in trial-number order."""
    done = completed_trials(trials, n_obj)

    def dominates(a, b) -> bool:
        pairs = list(zip(a.values, b.values, strict=True))
        return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)

    return sorted((t for t in done if not any(dominates(o, t) for o in done)), key=lambda t: t.number)


def baseline_values(exp: SearchExperiment) -> dict[str, Any] | None:
    """``[baseline]`` objective values in minimised form (FDR given as FDR becomes 1 - FDR).

    Values come from the table itself (``error = 0.31``) or, for ``@eval`` objectives, from ``results``: the
    ``results.json`` of ``agebias evaluate`` on the same set (its ``model`` entry, default the first model; it
    should use the objective's target FMR and age bins)."""
    if not exp.baseline:
        return None
    results = None
    if exp.baseline.get("results"):
        path = Path(str(exp.baseline["results"]))
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"[baseline] results {path}: cannot read ({err})") from None
        model = exp.baseline.get("model") or (results.get("model_order") or [None])[0]
        if model not in results.get("models", {}):
            raise UserError(f"[baseline] model '{model}' is not in {path}")
        results = results["models"][model]
    values = {}
    for o in exp.objectives:
        if o.name in exp.baseline:
            v = float(exp.baseline[o.name])
        elif results is not None and o.on == "eval":
            section = results.get("overall" if o.metric in ("eer", "fnmr") else "fairness", {})
            raw = section.get(o.metric)
            if raw is None:
                continue
            v = float(raw)
        else:
            continue
        values[o.name] = 1.0 - v if o.metric == "fdr" else v
    return {"label": str(exp.baseline.get("label", "baseline")), "values": values}


def write_pareto(study, exp: SearchExperiment, out: Path) -> tuple[Path, Path]:
    """Write ``pareto.json`` and ``pareto.png`` for the study's current state (atomically)."""
    trials = study.get_trials(deepcopy=False)
    names = [o.name for o in exp.objectives]
    front = pareto_front(trials, len(names))
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    doc = {
        "study": study.study_name,
        "objectives": [{"name": o.name, "metric": o.metric, "on": o.on, "label": o.label, "direction": "minimize"}
                       for o in exp.objectives],
        "n_trials": len(trials),
        "completed": states.get("COMPLETE", 0),
        "failed": states.get("FAIL", 0),
        "pruned": states.get("PRUNED", 0),
        "running": states.get("RUNNING", 0),
        "pareto": [{"number": t.number, "params": t.params, "objectives": dict(zip(names, t.values, strict=True)),
                    "dir": t.user_attrs.get("dir")} for t in front],
        "baseline": baseline_values(exp),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    json_path, png_path = out / "pareto.json", out / "pareto.png"
    write_json(json_path, doc)
    plot_pareto(trials, front, exp.objectives, doc["baseline"], png_path, study.study_name)
    return json_path, png_path


def _move_aside_foreign(trial_dir: Path, study: str, url: str, trial_id: int) -> None:
    """A folder left by another study (or a deleted storage) under this trial number is renamed, not reused."""
    if not trial_dir.exists() or not any(trial_dir.iterdir()):
        return
    try:
        old = json.loads((trial_dir / "params.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    if (old.get("study"), old.get("storage"), old.get("trial_id")) == (study, url, trial_id):
        return
    aside = trial_dir.with_name(f"{trial_dir.name}.old-{int(time.time())}")
    os.replace(trial_dir, aside)
    log.info(f"search: {trial_dir} held another study's trial; moved to {aside.name}")


# ---- the search loop ----------------------------------------------------------------------------------------------

def run_search(exp: SearchExperiment, trials: int | None = None, *, study_name: str | None = None,
               out: str | Path | None = None, seed: int | None = None, heartbeat: int | None = None,
               trial_fn: TrialFn | None = None) -> SearchSummary:
    """Join (or create) the study and run ``trials`` trials in this process; see the module docstring. Arguments
    left None take the experiment's values (``exp.search``: trials, sampler seed, heartbeat; ``exp.name``,
    ``exp.out``)."""
    import optuna

    # ERROR: a failed trial is reported by the one line below (traceback in its error.txt), not by Optuna's
    # warning with the whole traceback on the terminal
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat API
    out = Path(out) if out is not None else exp.out
    out.mkdir(parents=True, exist_ok=True)
    n_trials = exp.trials if trials is None else int(trials)
    if n_trials < 0:
        raise UserError(f"--trials must be >= 0, got {n_trials}")
    url = exp.storage or default_storage(out)
    shown_url = display_url(url)
    name = study_name or exp.name
    beat = exp.heartbeat if heartbeat is None else int(heartbeat)
    if trial_fn is None:
        from agebias.search.trial import run_trial as trial_fn
    rdb = open_storage(url, beat)
    sampler = make_sampler(exp.sampler, exp.search.seed if seed is None else seed, exp.population)
    study = open_study(rdb, name, len(exp.objectives), sampler)
    if beat > 0:
        optuna.storages.fail_stale_trials(study)
    log.info(f"search: study '{name}' in {shown_url} ({len(study.get_trials(deepcopy=False))} trials so far); "
             f"running {n_trials} here, outputs in {out}")
    write_pareto(study, exp, out)
    names = [o.name for o in exp.objectives]
    failures = 0

    def objective(trial) -> list[float]:
        nonlocal failures
        if beat > 0:  # a first beat now: Optuna's beat thread starts asynchronously, and a trial killed before
            rdb.record_heartbeat(trial._trial_id)  # its first beat would never count as stale
        params = exp.space.suggest(trial)
        trial_dir = out / "trials" / str(trial.number)
        _move_aside_foreign(trial_dir, name, shown_url, trial._trial_id)
        trial_dir.mkdir(parents=True, exist_ok=True)
        trial.set_user_attr("dir", os.path.relpath(trial_dir, out))
        write_json(trial_dir / "params.json", {"number": trial.number, "study": name, "storage": shown_url,
                                               "trial_id": trial._trial_id, "params": params})
        log.info(f"search: trial {trial.number} {json.dumps(params, default=str)}")
        try:
            result = trial_fn(exp, params, trial_dir)
            values = [float(result[n]) for n in names]
            bad = [n for n, v in zip(names, values, strict=True) if not math.isfinite(v)]
            if bad:
                raise ValueError(f"objective(s) {', '.join(bad)} not finite")
        except BaseException as err:  # an interrupted trial gets its error.txt too; re-raised, Optuna records FAIL
            failures += 1
            reason = f"{type(err).__name__}: {err}".splitlines()[0][:500]
            trial.set_user_attr("error", reason)
            write_text(trial_dir / "error.txt", reason + "\n\n" + traceback.format_exc())
            log.info(f"search: trial {trial.number} failed: {reason}")
            raise
        write_json(trial_dir / "objectives.json", dict(zip(names, values, strict=True)))
        log.info(f"search: trial {trial.number} done: " + ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values, strict=True)))
        return values

    def after_trial(study, _trial) -> None:
        write_pareto(study, exp, out)

    try:
        study.optimize(objective, n_trials=n_trials, catch=(Exception,), callbacks=[after_trial],
                       gc_after_trial=True)
    finally:
        try:
            json_path, png_path = write_pareto(study, exp, out)
        finally:
            close_storage(rdb)
    return SearchSummary(name, url, out, n_trials, failures, json_path, png_path)


def close_storage(rdb) -> None:
    """Close the storage's pooled database connections now (a server would otherwise see them drop when the
    process ends, e.g. PostgreSQL logging an unexpected EOF for each worker)."""
    engine = getattr(rdb, "engine", None)
    if engine is not None:
        engine.dispose()
