"""Acceptance: two `agebias search experiments/search_demo.toml --trials 2` workers started at once on one SQLite
study both finish; the study holds 4 trials; pareto.json and the plot are written; each trial kept its run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def make_generated_set(root: Path, n_ids: int = 6, ages=(4, 8, 12, 16, 30, 45), seed: int = 0) -> Path:
    """A tiny set in the generated layout ``<id>/<id>_<age>.png`` (112x112): a random low-frequency face-like
    pattern per identity, plus an age pattern shared by all identities, plus noise."""
    rng = np.random.default_rng(seed)
    age_pattern = {a: rng.normal(0, 1, (7, 7, 3)) for a in ages}
    for i in range(n_ids):
        ident = f"id{i:03d}"
        base = rng.normal(0, 1, (7, 7, 3))
        (root / ident).mkdir(parents=True, exist_ok=True)
        for a in ages:
            small = base + 0.6 * age_pattern[a] + 0.2 * rng.normal(0, 1, (7, 7, 3))
            img = np.kron(small, np.ones((16, 16, 1)))
            img = np.clip(128 + 40 * img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / ident / f"{ident}_{a}.png")
    (root / "generation.json").write_text('{"aligned_crops": true}')  # as agebias writes for aligned crops
    return root


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path):
    data = make_generated_set(tmp_path / "data")
    text = (REPO / "experiments" / "search_demo.toml").read_text()
    assert 'synthetic = "../runs/demo/generate/data"' in text
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "search_demo.toml").write_text(
        text.replace('synthetic = "../runs/demo/generate/data"', f'synthetic = "{data}"'))
    env = {**os.environ, "AGEBIAS_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "agebias", "search", "experiments/search_demo.toml", "--trials", "2"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=540)[0] for p in procs]
    for p, text_out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text_out[-3000:]
    out = tmp_path / "runs" / "search_demo"
    import optuna

    study = optuna.load_study(study_name="search-demo", storage=f"sqlite:///{out / 'study.db'}")
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["n_trials"] == 4 and doc["completed"] == 4 and doc["pareto"]
    for entry in doc["pareto"]:
        assert set(entry["objectives"]) == {"error", "fairness"} and "mitigation" in entry["params"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    for t in trials:
        tdir = out / "trials" / str(t.number)
        assert (tdir / "finetune" / "backbone.pth").is_file() and (tdir / "finetune" / "done.json").is_file()
        assert json.loads((tdir / "objectives.json").read_text()) == pytest.approx(dict(zip(["error", "fairness"],
                                                                                            t.values, strict=True)))
        metrics = json.loads((tdir / "metrics.json").read_text())
        assert len(metrics["metrics"][-1]["groups"]) == 3  # per age group rates kept
