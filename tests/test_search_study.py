"""The study machinery of `agebias search` with a fake trial function (no training): failures recorded,
the Pareto front and plot written, a killed worker's trial failed by the heartbeat of the next worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from agebias.search.experiment import load_search_experiment
from agebias.search.study import default_storage, pareto_front, run_search

TOML = """
[experiment]
name = "fake"
[search]
sampler = "SAMPLER"
heartbeat = 0
[data]
synthetic = "DATA"
[finetune]
backbone = "iresnet:1,1,1,1@8,8,16,16"
init = "random"
[space]
x = { type = "float", low = 0.0, high = 1.0 }
head = ["arcface", "cosface"]
[objectives]
error = "eer@val"
fairness = "fdr@val"
[baseline]
label = "reference model"
error = 0.5
fairness = 0.6
"""
# the fake space uses a finetune field name ("head") and a free one is not allowed, so use lr as x
TOML = TOML.replace("x = {", "lr = {")


def _experiment(tmp_path: Path, sampler: str = "nsga2"):
    (tmp_path / "data").mkdir(exist_ok=True)
    p = tmp_path / "fake.toml"
    p.write_text(TOML.replace("DATA", str(tmp_path / "data")).replace("SAMPLER", sampler))
    return load_search_experiment(p)


def fake_trial(exp, params, trial_dir):
    """error = lr, fairness = 1 - lr (+0.3 for cosface); trial 1 and cosface trials with lr > 0.8 fail."""
    (trial_dir / "artefact.txt").write_text("kept")
    if trial_dir.name == "1" or (params["head"] == "cosface" and params["lr"] > 0.8):
        raise RuntimeError("simulated training crash")
    return {"error": params["lr"], "fairness": 1.0 - params["lr"] + (0.3 if params["head"] == "cosface" else 0.0)}


@pytest.mark.parametrize("sampler, n", [pytest.param("nsga2", 10, marks=pytest.mark.slow), ("tpe", 4)])
def test_study_runs_records_failures_and_writes_pareto(tmp_path, sampler, n):
    exp = _experiment(tmp_path, sampler)
    out = tmp_path / "out"
    summary = run_search(exp, n, out=out, seed=2, trial_fn=fake_trial)
    assert summary.storage == default_storage(out) and (out / "study.db").is_file()
    study = optuna.load_study(study_name="fake", storage=summary.storage)
    trials = study.get_trials()
    assert len(trials) == n
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert 1 in [t.number for t in failed]
    assert summary.failed == len(failed)
    for t in failed:
        assert "simulated training crash" in t.user_attrs["error"]
        assert (out / "trials" / str(t.number) / "error.txt").is_file()
    assert all((out / "trials" / str(t.number) / "artefact.txt").is_file() for t in trials)
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["n_trials"] == n and doc["completed"] == n - len(failed) and doc["failed"] == len(failed)
    # the front, recomputed by hand: arcface points lie on error + fairness = 1 (all non-dominated among
    # themselves); a cosface point is dominated iff some arcface trial has lr <= its lr
    done = [t for t in trials if t.state.name == "COMPLETE"]
    arc = [t.params["lr"] for t in done if t.params["head"] == "arcface"]
    expected = sorted(t.number for t in done if t.params["head"] == "arcface" or not any(a <= t.params["lr"]
                                                                                       for a in arc))
    assert sorted(p["number"] for p in doc["pareto"]) == expected
    first = doc["pareto"][0]
    assert set(first["params"]) == {"lr", "head"} and set(first["objectives"]) == {"error", "fairness"}
    assert first["dir"] == f"trials/{first['number']}"
    assert doc["baseline"] == {"label": "reference model", "values": {"error": 0.5, "fairness": pytest.approx(0.4)}}
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if sampler == "nsga2":  # a second worker on the same storage adds to the same study
        run_search(exp, 1, out=out, trial_fn=fake_trial)
        assert json.loads((out / "pareto.json").read_text())["n_trials"] == n + 1
    # another study in the same folder does not reuse trial 0's folder: the old one is moved aside
    run_search(exp, 1, out=out, study_name="other", trial_fn=fake_trial)
    assert json.loads((out / "trials" / "0" / "params.json").read_text())["study"] == "other"
    assert len(list((out / "trials").glob("0.old-*"))) == 1


def test_the_storage_connections_are_closed_when_the_search_ends(tmp_path, monkeypatch):
    """Closed by the search, not left to the end of the process (``agebias`` freezes its objects before exit)."""
    from agebias.search import study as study_module

    closed, opened = [], []
    real_open = study_module.open_storage

    def spy_open(url, heartbeat=0):
        rdb = real_open(url, heartbeat)
        opened.append(rdb)
        real_dispose = rdb.engine.dispose
        rdb.engine.dispose = lambda *a, **k: closed.append(url) or real_dispose(*a, **k)
        return rdb

    monkeypatch.setattr(study_module, "open_storage", spy_open)
    run_search(_experiment(tmp_path, "tpe"), 1, out=tmp_path / "out", seed=2, trial_fn=fake_trial)
    assert len(opened) == 1 and closed == [default_storage(tmp_path / "out")]
    assert opened[0].engine.pool.checkedin() == 0  # no connection left open in the pool


def test_a_failed_trial_is_one_line_on_the_terminal_not_a_traceback(tmp_path, capfd, monkeypatch):
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record):
            self.records.append(record)

    keep = Keep()
    optuna_logger = logging.getLogger("optuna")  # Optuna's own handler writes to the terminal; watch what passes
    optuna_logger.addHandler(keep)
    monkeypatch.delenv("AGEBIAS_QUIET", raising=False)  # our own line is an info message
    try:
        summary = run_search(_experiment(tmp_path, "tpe"), 2, out=tmp_path / "out", seed=2, trial_fn=fake_trial)
    finally:
        optuna_logger.removeHandler(keep)
    err = capfd.readouterr().err
    assert summary.failed >= 1 and "trial 1 failed: RuntimeError: simulated training crash" in err
    # Optuna's "Trial 1 failed ..." warning carried the whole traceback to the terminal
    shown = [r for r in keep.records if r.levelno >= optuna_logger.getEffectiveLevel()]
    assert not any(r.exc_info or "Traceback" in r.getMessage() or "failed" in r.getMessage() for r in shown)
    assert "Traceback" in (tmp_path / "out" / "trials" / "1" / "error.txt").read_text()


def test_pareto_front_of_hand_made_trials():
    def t(n, values, state="COMPLETE"):
        return optuna.trial.FrozenTrial(number=n, state=optuna.trial.TrialState[state], value=None, values=values,
                                        datetime_start=None, datetime_complete=None, params={},
                                        distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
                                        trial_id=n)
    trials = [t(0, [1, 1]), t(1, [0.5, 2]), t(2, [2, 2]), t(3, [1, 1]), t(4, None, "FAIL"), t(5, [0.5, 3])]
    # 2 is dominated by 0; 5 by 1; 0 and 3 tie (neither dominates)
    assert [x.number for x in pareto_front(trials, 2)] == [0, 1, 3]


WORKER = """
import sys, time
from agebias.search.experiment import load_search_experiment
from agebias.search.study import run_search

def slow(exp, params, trial_dir):
    (trial_dir / "started").write_text("1")
    time.sleep(600)

exp = load_search_experiment(sys.argv[1])
run_search(exp, 1, out=sys.argv[2], heartbeat=1, trial_fn=slow)
"""


@pytest.mark.slow
def test_killed_worker_leaves_a_usable_study(tmp_path):
    exp_path = tmp_path / "fake.toml"
    _experiment(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "AGEBIAS_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(exp_path), str(out)], env=env)
    try:
        deadline = time.time() + 120
        while not (out / "trials" / "0" / "started").exists():
            assert time.time() < deadline and proc.poll() is None, "worker did not start its trial"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    storage = default_storage(out)
    assert optuna.load_study(study_name="fake", storage=storage).get_trials()[0].state.name == "RUNNING"
    time.sleep(4.0)  # two missed heartbeats (1 s each), with margin for a loaded machine
    exp = load_search_experiment(exp_path)
    run_search(exp, 1, out=out, heartbeat=1, trial_fn=lambda e, params, d: {"error": params["lr"], "fairness": 0.5})
    states = [t.state.name for t in optuna.load_study(study_name="fake", storage=storage).get_trials()]
    assert states == ["FAIL", "COMPLETE"]  # the killed worker's trial failed; the new worker's own trial completed
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["n_trials"] == 2 and doc["running"] == 0


def test_baseline_from_values_and_from_evaluator_results(tmp_path):
    from agebias.errors import UserError
    from agebias.search.study import baseline_values

    exp = _experiment(tmp_path)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"schema": "agebias.evaluate/2", "model_order": ["ft", "sface"], "models": {
        "ft": {"overall": {"eer": 0.1}, "fairness": {"fdr": 0.9}},
        "sface": {"overall": {"eer": 0.2}, "fairness": {"fdr": 0.75}}}}))
    exp.objectives = [o.__class__(o.name, o.metric, "eval") for o in exp.objectives]
    exp.baseline = {"results": str(results), "label": "SFace"}  # no model named: the first one
    assert baseline_values(exp) == {"label": "SFace", "values": {"error": 0.1, "fairness": pytest.approx(0.1)}}
    exp.baseline["model"] = "sface"
    assert baseline_values(exp)["values"] == {"error": 0.2, "fairness": pytest.approx(0.25)}
    exp.baseline["error"] = 0.3  # an explicit value wins
    assert baseline_values(exp)["values"]["error"] == 0.3
    exp.baseline["model"] = "other"
    with pytest.raises(UserError, match="not in"):
        baseline_values(exp)
