"""Blocked pair scoring equals the dense computation; the streamed two-pass engine equals the in-memory one."""

import math

import numpy as np
import pytest

from agebias.evaluate import metrics as M
from agebias.evaluate.allpairs import evaluate_embeddings_allpairs
from agebias.evaluate.bootstrap import subject_bootstrap
from agebias.evaluate.grouping import AgeBins, make_grouping
from agebias.evaluate.pairs import normalise, score_all_pairs
from agebias.evaluate.settings import EvalSettings


def _data(n_subj=25, per=8, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_subj, d))
    subj = np.repeat(np.arange(n_subj), per)
    emb = centres[subj] + 0.9 * rng.standard_normal((subj.size, d))
    ages = rng.integers(0, 70, subj.size).tolist()
    ages[3] = None
    perm = rng.permutation(subj.size)  # subjects not contiguous in the input
    return emb[perm].astype(np.float32), [f"s{x}" for x in subj[perm]], [ages[i] for i in perm]


def test_age_bins_parse_and_index():
    b = AgeBins.parse("0-12,13-19,20-39,40-69")
    assert b.labels == ["0-12", "13-19", "20-39", "40-69"]
    assert b.index(12.5) == 0 and b.index(13) == 1 and b.index(70) == -1 and b.index(None) == -1
    assert AgeBins.parse("21+,0-20").labels == ["0-20", "21+"]
    from agebias.errors import UserError
    with pytest.raises(UserError):
        AgeBins.parse("0-12,10-20")


@pytest.mark.parametrize("mode", ["both", "mean", "gap"])
def test_blocked_scores_equal_dense(mode):
    emb, subj, ages = _data()
    gp = make_grouping(ages, mode)
    ps = score_all_pairs(emb, subj, gp, block=37)
    e = normalise(emb).astype(np.float64)
    dense = e @ e.T
    n = len(subj)
    iu, ju = np.triu_indices(n, 1)
    same = np.array(subj)[iu] == np.array(subj)[ju]
    assert ps.gen_score.size == same.sum() and ps.imp_score.size == (~same).sum()
    got = dict(zip(zip(np.minimum(ps.gen_i, ps.gen_j), np.maximum(ps.gen_i, ps.gen_j)), ps.gen_score))
    for i, j in zip(iu[same], ju[same]):
        assert got[(i, j)] == pytest.approx(dense[i, j], abs=1e-5)
    np.testing.assert_allclose(np.sort(ps.imp_score), np.sort(dense[iu[~same], ju[~same]]), atol=1e-5)
    keys = gp.pair_keys(iu[~same], ju[~same])
    ng = len(gp.labels) + 1
    assert np.bincount(gp.key_group[ps.imp_key] + 1, minlength=ng).tolist() == \
        np.bincount(gp.key_group[keys] + 1, minlength=ng).tolist()
    for cell, ks in gp.cell_keys().items():
        assert np.isin(ps.imp_key, ks).sum() == np.isin(keys, ks).sum()
    # max impostor per image (identification rank-1 input)
    d2 = dense.copy()
    d2[np.array(subj)[:, None] == np.array(subj)[None, :]] = -np.inf
    np.testing.assert_allclose(ps.max_impostor, d2.max(axis=1), atol=1e-5)


@pytest.mark.parametrize("mode", ["both", "mean"])
def test_streamed_equals_in_memory(mode):
    emb, subj, ages = _data(n_subj=40, per=10, seed=3)
    base = dict(pair_grouping=mode, bootstrap=50, identification="on", curve_fmrs=(1e-3, 1e-2, 1e-1),
                target_fmr=1e-2, instance_fpr=1e-3, block=53)
    exact = evaluate_embeddings_allpairs(emb, subj, ages, EvalSettings(keep_all_pairs=10**9, **base))
    stream = evaluate_embeddings_allpairs(emb, subj, ages, EvalSettings(keep_all_pairs=0, **base))
    assert stream["data"]["engine"].startswith("streamed") and stream["data"]["passes"] >= 2
    for k in ("threshold", "fmr", "fnmr", "eer", "eer_threshold", "false_matches", "false_non_matches"):
        assert stream["overall"][k] == exact["overall"][k], k
    assert stream["overall"]["fnmr_at_fmr"] == exact["overall"]["fnmr_at_fmr"]
    assert stream["overall"]["auc"] == pytest.approx(exact["overall"]["auc"], abs=stream["overall"]["auc_error_bound"] + 1e-12)
    assert stream["overall"]["d_prime"] == pytest.approx(exact["overall"]["d_prime"], rel=1e-3)
    for g in exact["groups"]:
        for k in ("n_genuine", "n_impostor", "false_matches", "fmr", "fnmr", "eer", "eer_threshold"):
            a, b = stream["groups"][g][k], exact["groups"][g][k]
            assert (a == b) or (a != a and b != b), (g, k)
    for a, b in zip(stream["fairness_vs_fmr"], exact["fairness_vs_fmr"]):
        assert a["threshold"] == b["threshold"] and a["group_fmr"] == b["group_fmr"]
    assert stream["fairness"]["bootstrap"]["garbe_ci"] == exact["fairness"]["bootstrap"]["garbe_ci"]
    assert stream["instance_level"] == exact["instance_level"]
    assert stream["impostor_table"] == exact["impostor_table"]


def test_in_memory_metrics_match_plain_arrays():
    emb, subj, ages = _data(seed=5)
    st = EvalSettings(bootstrap=0, identification="off", target_fmr=1e-2)
    res = evaluate_embeddings_allpairs(emb, subj, ages, st)
    e = normalise(emb)
    dense = (e @ e.T).astype(np.float32)
    iu, ju = np.triu_indices(len(subj), 1)
    same = np.array(subj)[iu] == np.array(subj)[ju]
    s = dense[iu, ju]
    gen, imp = s[same], s[~same]
    tau, f = M.threshold_at_fmr(imp, 1e-2)
    assert res["overall"]["threshold"] == pytest.approx(tau, abs=1e-6)
    assert res["overall"]["eer"] == pytest.approx(M.eer(gen, imp)[0], abs=2e-3)
    assert res["data"]["n_genuine"] == same.sum()


def test_bootstrap_unit_weights_reproduce_point_estimate():
    emb, subj, ages = _data(seed=7)
    gp = make_grouping(ages, "both", "0-30,31-69")
    ps = score_all_pairs(emb, subj, gp)
    tau = float(np.quantile(ps.imp_score, 0.9))
    acc = ps.imp_score >= tau
    n_s = int(ps.subjects.max()) + 1
    out = subject_bootstrap(gp, ps.subjects, ps.gen_i, ps.gen_j, ps.gen_score >= tau, ps.imp_i[acc],
                            ps.imp_j[acc], n_boot=1, weights=np.ones((1, n_s)))
    gk = gp.key_group[ps.imp_key]
    for g in range(2):
        fm = ((gk == g) & acc).sum() / (gk == g).sum()
        assert out["replicate_fmr"][0, g] == pytest.approx(fm)
        gg = gp.key_group[ps.genuine_keys()] == g
        assert out["replicate_fnmr"][0, g] == pytest.approx((ps.gen_score[gg] < tau).mean())


def test_empty_group_and_group_without_impostors():
    emb, subj, ages = _data(seed=11)
    ages = [min(a, 60) if a is not None else None for a in ages]
    idx = [i for i, s in enumerate(subj) if s == "s0"][:2]
    for i in idx:  # only subject s0 is aged 70-79: genuine pairs but no impostors in that group
        ages[i] = 75
    st = EvalSettings(age_bins="0-30,31-69,70-79,80+", bootstrap=20, identification="off")
    res = evaluate_embeddings_allpairs(emb, subj, ages, st)
    g70, g80 = res["groups"]["70-79"], res["groups"]["80+"]
    assert g70["n_genuine"] == 1 and g70["n_impostor"] == 0 and math.isnan(g70["fmr"])
    assert g80["n_genuine"] == 0 and g80["n_impostor"] == 0 and math.isnan(g80["fnmr"]) and math.isnan(g80["eer"])
    assert res["fairness"]["undefined_fmr_groups"] == ["70-79", "80+"]
    assert res["fairness"]["n_groups_fmr"] == 2 and res["fairness"]["garbe"] == res["fairness"]["garbe"]
    assert any("80+" in w for w in res["warnings"])


def test_unknown_ages_warn_plainly_and_plot_without_matplotlib_warnings(tmp_path):
    """Empty groups were described as having 'only 0 genuine and 0 impostor pairs ... very uncertain', and the
    age-gap figure raised matplotlib's 'No artists with labels' warning when no pair had two known ages."""
    import warnings

    from agebias.evaluate.plots import genuine_vs_age_gap

    rng = np.random.default_rng(3)
    emb = normalise(rng.standard_normal((8, 6)))
    subjects = ["a", "a", "b", "b", "c", "c", "d", "d"]
    sec = evaluate_embeddings_allpairs(emb, subjects, [None] * 8, EvalSettings(bootstrap=0, identification="off"))
    assert "Age group 0-12 has no pairs; its rates are undefined." in sec["warnings"]
    assert not any("only 0 genuine and 0 impostor" in w for w in sec["warnings"])
    results = {"model_order": ["m"], "models": {"m": sec}, "settings": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = genuine_vs_age_gap(results, tmp_path, ["png"])
    assert (tmp_path / "genuine_vs_age_gap.png").is_file() and files
