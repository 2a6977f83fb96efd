"""One real trial in-process: fine-tune (a timm architecture from the search space, one epoch, a mitigation) and
score '@val' and '@eval' objectives, the latter through the evaluator's library API with its report kept in the
trial folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agebias.search.experiment import load_search_experiment
from agebias.search.objectives import pair_metrics
from agebias.search.study import run_search

from test_search_workers import make_generated_set  # noqa: E402  (tests/ is on sys.path under pytest)

TOML = """
[experiment]
name = "one"
seed = 0
[search]
heartbeat = 0
[data]
synthetic = "DATA"
eval = "DATA"
eval_kind = "generated"
eval_aligned = true
eval_age_bins = "0-9,10-19,20-69"
[finetune]
backbone = "iresnet:1,1,1,1@8,8,16,16"
init = "random"
aligned = true
epochs = 1
batch_size = 12
val_fraction = 0.25
age_bins = "0-9,10-19,20+"
tensorboard = false
frozen_layers = "1,2"
[space]
arch = ["timm:resnet10t"]
mitigation = ["ddl:topk=8"]
lr = { type = "float", low = 0.01, high = 0.05, log = true }
[objectives]
error = "eer@val"
fairness = { metric = "fdr", on = "eval", fmr = 0.1 }
"""


@pytest.mark.slow
def test_one_real_trial_scores_val_and_eval(tmp_path):
    data = make_generated_set(tmp_path / "data")
    p = tmp_path / "one.toml"
    p.write_text(TOML.replace("DATA", str(data)))
    exp = load_search_experiment(p)
    summary = run_search(exp, 1, out=tmp_path / "out", seed=0)
    assert summary.failed == 0
    tdir = tmp_path / "out" / "trials" / "0"
    cfg = json.loads((tdir / "finetune" / "config.json").read_text())
    assert cfg["config"]["mitigation"].startswith("ddl:") and cfg["config"]["init"] == "random"
    assert cfg["config"]["arch"] == "timm:resnet10t" and cfg["config"]["frozen_layers"] == ""  # no iresnet stages
    report = json.loads((tdir / "eval" / "results.json").read_text())  # the evaluator's report
    results = report["models"][report["model_order"][0]]
    objectives = json.loads((tdir / "objectives.json").read_text())
    assert objectives["fairness"] == pytest.approx(1.0 - results["fairness"]["fdr"])
    metrics = json.loads((tdir / "metrics.json").read_text())
    assert [m["on"] for m in metrics["metrics"]] == ["val", "eval"]
    assert objectives["error"] == pytest.approx(metrics["metrics"][0]["eer"])
    # '@val' objectives come from the evaluator's own engine and metric functions: the same numbers on the same
    # embeddings (the tolerance covers only re-embedding the faces here)
    from agebias.data.faces import load_aligned_faces
    from agebias.data.sources import open_dataset
    from agebias.models.embedder import build_embedder

    faces = load_aligned_faces(open_dataset(data, "generated").records, aligned=True)
    emb = build_embedder(metrics["backbone"], arch="timm:resnet10t").embed(faces.crops)
    mine = pair_metrics(emb, [r.subject for r in faces.records], [r.age for r in faces.records],
                        "0-9,10-19,20-69", fmr=0.1)
    assert mine["eer"] == pytest.approx(results["overall"]["eer"], abs=0.01)
    assert mine["fdr"] == pytest.approx(results["fairness"]["fdr"], abs=0.05)
    assert mine["genuine"] == results["overall"].get("n_genuine", mine["genuine"])
    assert np.isfinite(objectives["fairness"])
