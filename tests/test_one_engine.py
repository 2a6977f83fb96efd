"""Fine-tuning validation and the search objectives compute through the evaluator's engine: same numbers as
``agebias.evaluate`` on the same embeddings, in the in-memory and in the streamed engine alike."""

import numpy as np
import pytest

import agebias
from agebias.finetune.validation import validate_embeddings
from agebias.search.objectives import pair_metrics

BINS = "0-12,13-39,40-79"


def _data(n_subj, per, d=24, seed=0):
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subj), per)
    ages = rng.integers(0, 80, subj.size)
    noise = np.where(ages < 13, 2.2, 1.2)[:, None]  # children harder: the groups differ
    emb = rng.standard_normal((n_subj, d))[subj] + noise * rng.standard_normal((subj.size, d))
    perm = rng.permutation(subj.size)
    return emb[perm].astype(np.float32), [f"id{s}" for s in subj[perm]], ages[perm].tolist()


@pytest.mark.parametrize("n_subj, per", [(40, 8), (300, 7)])  # 51,040 pairs (in memory); 2,203,950 (streamed)
def test_validation_and_objectives_equal_the_evaluator(n_subj, per):
    emb, subjects, ages = _data(n_subj, per)
    ev = agebias.evaluate(emb, subjects, ages, age_bins=BINS, bootstrap=0, identification="off")
    sec = ev.section()
    assert sec["data"]["engine"].startswith("streamed" if n_subj * per > 2000 else "all scores")
    ov = sec["overall"]
    val = validate_embeddings(emb, subjects, seed=3)
    assert val.eer == ov["eer"]
    assert val.fnmr_at_fmr == ov["fnmr_at_fmr"]["0.001"] == ov["fnmr"]
    assert val.fmr_realised == ov["fnmr_at_fmr_detail"]["0.001"]["fmr"] == ov["realised_fmr"]
    assert (val.n_genuine, val.n_impostor) == (ov["n_genuine"], ov["n_impostor"])

    ev2 = agebias.evaluate(emb, subjects, ages, age_bins=BINS, target_fmr=1e-2, alpha=0.3, bootstrap=0,
                           identification="off").section()
    m = pair_metrics(emb, subjects, ages, BINS, fmr=1e-2, alpha=0.3)
    o2 = ev2["overall"]
    assert (m["eer"], m["tau"], m["fmr"], m["fnmr"]) == (o2["eer"], o2["threshold"], o2["realised_fmr"], o2["fnmr"])
    for row in m["groups"]:
        g = ev2["groups"][row["name"]]
        assert (row["genuine"], row["impostor"]) == (g["n_genuine"], g["n_impostor"])
        assert row["fmr"] == pytest.approx(g["fmr"], nan_ok=True) and row["fnmr"] == pytest.approx(g["fnmr"])
    for k in ("garbe", "fdr", "ir"):
        assert m[k] == pytest.approx(ev2["fairness"][k])
