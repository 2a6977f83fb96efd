"""Blocked pair scoring equals the dense computation; the streamed two-pass engine equals the in-memory one."""

import math

import numpy as np
import pytest

from agebias.evaluate import metrics as M
from agebias.evaluate.allpairs import evaluate_embeddings_allpairs
from agebias.evaluate.bins import bin_index
from agebias.evaluate.bootstrap import subject_bootstrap
from agebias.evaluate.grouping import AgeBins, make_grouping
from agebias.evaluate.pairs import ExactNeeds, normalise, score_all_pairs
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
    got = dict(zip(zip(np.minimum(ps.gen_i, ps.gen_j), np.maximum(ps.gen_i, ps.gen_j), strict=True), ps.gen_score,
                   strict=True))
    for i, j in zip(iu[same], ju[same], strict=True):
        assert got[(i, j)] == pytest.approx(dense[i, j], abs=1e-5)
    np.testing.assert_allclose(np.sort(ps.imp_score), np.sort(dense[iu[~same], ju[~same]]), atol=1e-5)
    keys = gp.pair_keys(iu[~same], ju[~same])
    ng = len(gp.labels) + 1
    assert np.bincount(gp.key_group[ps.imp_key] + 1, minlength=ng).tolist() == \
        np.bincount(gp.key_group[keys] + 1, minlength=ng).tolist()
    for ks in gp.cell_keys().values():
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
    assert stream["data"]["engine"].startswith("streamed") and stream["data"]["passes"] == 1
    for k in ("threshold", "fmr", "fnmr", "eer", "eer_threshold", "false_matches", "false_non_matches"):
        assert stream["overall"][k] == exact["overall"][k], k
    assert stream["overall"]["fnmr_at_fmr"] == exact["overall"]["fnmr_at_fmr"]
    assert stream["overall"]["auc"] == pytest.approx(exact["overall"]["auc"], abs=stream["overall"]["auc_error_bound"] + 1e-12)
    assert stream["overall"]["d_prime"] == pytest.approx(exact["overall"]["d_prime"], rel=1e-3)
    for g in exact["groups"]:
        for k in ("n_genuine", "n_impostor", "false_matches", "fmr", "fnmr", "eer", "eer_threshold"):
            a, b = stream["groups"][g][k], exact["groups"][g][k]
            assert (a == b) or (a != a and b != b), (g, k)
    for a, b in zip(stream["fairness_vs_fmr"], exact["fairness_vs_fmr"], strict=True):
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

    from agebias.evaluate.plots import FIGURES

    rng = np.random.default_rng(3)
    emb = normalise(rng.standard_normal((8, 6)))
    subjects = ["a", "a", "b", "b", "c", "c", "d", "d"]
    sec = evaluate_embeddings_allpairs(emb, subjects, [None] * 8, EvalSettings(bootstrap=0, identification="off"))
    assert "Age group 0-12 has no pairs; its rates are undefined." in sec["warnings"]
    assert not any("only 0 genuine and 0 impostor" in w for w in sec["warnings"])
    results = {"model_order": ["m"], "models": {"m": sec}, "settings": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = FIGURES["genuine_vs_age_gap"][1](results, tmp_path, ["png"])
    assert (tmp_path / "genuine_vs_age_gap.png").is_file() and files


# ---------------------------------------------------------------- the one-pass streamed engine, exactly


def _tied_data(n_subj=45, per=9, d=5, seed=21, noise=0.8):
    """Embeddings in {-1, 0, 1}^d (many exactly equal scores), subjects shuffled, ages 0-79 and some unknown."""
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subj), per)
    e = np.clip(np.round(rng.standard_normal((n_subj, d))[subj] + noise * rng.standard_normal((subj.size, d))), -1, 1)
    e[np.all(e == 0, axis=1), 0] = 1.0
    ages = [None if a >= 80 else int(a) for a in rng.integers(0, 86, subj.size)]
    perm = rng.permutation(subj.size)
    return e[perm].astype(np.float32), [f"s{x}" for x in subj[perm]], [ages[i] for i in perm]


def _pair_set(i, j):
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True))


def _assert_same(stream, memory, gp, needs):
    """Every exact quantity of the streamed engine equals the in-memory one; no bin was missing."""
    gen_groups = gp.key_group[memory.genuine_keys()]
    sets = [(None, np.ones(gen_groups.size, bool), needs.fmrs, needs.eer)]
    sets += [(gp.keys_of_group(g), gen_groups == g, needs.group_fmrs, needs.group_eer) for g in range(len(gp.labels))]
    taus = []
    for keys, gmask, fmrs, eer in sets:
        ds, dm = stream.impostor_dist(keys), memory.impostor_dist(keys)
        gen = M.ExactDist(memory.gen_score[gmask])
        assert ds.n == dm.n
        if ds.n == 0:
            continue
        for t in fmrs:
            assert M.threshold_at_fmr(ds, t) == M.threshold_at_fmr(dm, t), (keys, t)
            assert M.fnmr_at_fmr(gen, ds, t) == M.fnmr_at_fmr(gen, dm, t), (keys, t)
            if keys is None:
                taus.append(M.threshold_at_fmr(dm, t)[0])
        if gen.n and eer:
            assert M.eer(gen, ds) == M.eer(gen, dm), keys
    for tau in taus + list(needs.thresholds):
        for k in range(gp.n_keys):
            assert stream.impostor_dist([k]).count_ge(tau) == memory.impostor_dist([k]).count_ge(tau), (k, tau)
    assert not stream.missing, f"bins missed by the one pass: {sorted(stream.missing)[:5]}"
    return taus


@pytest.mark.parametrize("mode", ["both", "mean", "gap"])
def test_one_pass_equals_in_memory_with_ties(mode):
    emb, subj, ages = _tied_data()
    gp = make_grouping(ages, mode, "0-12,13-39,40-79")
    needs = ExactNeeds(fmrs=(1e-3, 1e-2, 0.05, 0.2), group_fmrs=(1e-2, 0.1), accept_fmrs=(1e-2,))
    memory = score_all_pairs(emb, subj, gp, block=29)
    stream = score_all_pairs(emb, subj, gp, block=29, keep_all_pairs=0, needs=needs)
    assert not memory.streamed and stream.streamed and stream.passes == 1
    assert np.unique(memory.imp_score).size < memory.imp_score.size / 20  # heavily tied
    for vals, bins in zip(stream.kept_values, stream.kept_bins, strict=True):  # per key: ascending, with their bins
        assert vals.dtype == np.float32 and bins.dtype == np.uint16
        assert np.all(np.diff(vals) >= 0) and np.array_equal(bins, bin_index(vals))
    assert stream.gen_score.tobytes() == memory.gen_score.tobytes()
    assert np.array_equal(stream.max_impostor, memory.max_impostor)
    taus = _assert_same(stream, memory, gp, needs)
    tau = taus[1]  # the threshold at FMR 1e-2: its accepted pairs are listed
    si, sj, sk = stream.accepted_impostors(tau)
    mi, mj, _ = memory.accepted_impostors(tau)
    assert _pair_set(si, sj) == _pair_set(mi, mj) and si.size == mi.size
    assert np.array_equal(np.sort(sk), np.sort(gp.pair_keys(mi, mj)))
    with pytest.raises(RuntimeError):  # below the accepted-pairs cut nothing is promised
        stream.accepted_impostors(taus[3])


def test_one_pass_windows_reach_a_high_eer():
    """A poor model (EER ~ 0.3): the EER crossing is far outside the reservoir; the pilot's windows hold it."""
    emb, subj, ages = _data(n_subj=60, per=8, d=24, seed=4)
    emb = emb + 2.5 * np.random.default_rng(1).standard_normal(emb.shape).astype(np.float32)
    gp = make_grouping(ages, "both", "0-30,31-69")
    needs = ExactNeeds(fmrs=(1e-3,), group_fmrs=(1e-3,))
    memory = score_all_pairs(emb, subj, gp, block=64)
    stream = score_all_pairs(emb, subj, gp, block=64, keep_all_pairs=0, needs=needs)
    eer, _ = M.eer(memory.gen_score, memory.impostor_dist(None))
    assert eer > 0.2
    kept = sum(v.size for v in stream.kept_values)
    assert kept < memory.imp_score.size / 2  # windows, not everything
    _assert_same(stream, memory, gp, needs)


def test_missed_window_costs_one_more_pass_not_exactness(monkeypatch):
    """With the pilot's band forced to nothing, the windows miss; metrics ask for the missing bins, one more pass
    collects them, and the numbers equal the in-memory ones."""
    from agebias.evaluate import pairs

    monkeypatch.setattr(pairs, "PILOT_Z", -50.0)
    emb, subj, ages = _data(n_subj=40, per=10, seed=3)
    st = EvalSettings(bootstrap=20, identification="off", curve_fmrs=(1e-2, 0.1, 0.3), target_fmr=1e-2,
                      instance_fpr=1e-3, block=53)
    exact = evaluate_embeddings_allpairs(emb, subj, ages, EvalSettings(**{**st.to_dict(), "keep_all_pairs": 10**9}))
    stream = evaluate_embeddings_allpairs(emb, subj, ages, EvalSettings(**{**st.to_dict(), "keep_all_pairs": 0}))
    assert stream["data"]["passes"] == 2
    for k in ("threshold", "eer", "eer_threshold", "false_matches", "fnmr_at_fmr"):
        assert stream["overall"][k] == exact["overall"][k], k
    for a, b in zip(stream["fairness_vs_fmr"], exact["fairness_vs_fmr"], strict=True):
        assert a["threshold"] == b["threshold"] and a["group_fmr"] == b["group_fmr"]
    assert stream["instance_level"] == exact["instance_level"]


def test_fixed_threshold_counts_and_accepted_pairs():
    emb, subj, ages = _tied_data(seed=5)
    gp = make_grouping(ages, "both", "0-30,31-79")
    memory = score_all_pairs(emb, subj, gp, block=40)
    tau = float(np.quantile(memory.imp_score, 0.97))
    needs = ExactNeeds(fmrs=(1e-3,), group_fmrs=(), thresholds=(tau,), eer=False, group_eer=False)
    stream = score_all_pairs(emb, subj, gp, block=40, keep_all_pairs=0, needs=needs)
    _assert_same(stream, memory, gp, needs)
    si, sj, _ = stream.accepted_impostors(tau)
    mi, mj, _ = memory.accepted_impostors(tau)
    assert si.size > 0 and _pair_set(si, sj) == _pair_set(mi, mj)
    capped = score_all_pairs(emb, subj, gp, block=40, keep_all_pairs=0,
                             needs=ExactNeeds(fmrs=(), group_fmrs=(), thresholds=(tau,), eer=False, group_eer=False,
                                              max_accepted=si.size // 2))
    with pytest.raises(RuntimeError):  # more accepted pairs than the cap: not listed, and said so
        capped.accepted_impostors(tau)


def test_bin_floor_is_the_lowest_score_of_each_bin():
    from agebias.evaluate.pairs import NB, bin_floor, bin_index

    b = np.arange(1, NB)
    f = bin_floor(b)
    assert np.array_equal(bin_index(f), b)
    assert (bin_index(np.nextafter(f, np.float32(-np.inf))) == b - 1).all()
    assert bin_floor([0, NB]).tolist() == [-np.inf, np.inf]


def test_bin_counts_with_and_without_torch(monkeypatch):
    """The histogram is counted by torch when it is loaded, else by numpy: the same counts."""
    import sys

    import torch  # noqa: F401  (loaded: the torch path)

    from agebias.evaluate.pairs import _bincount

    a = np.random.default_rng(0).integers(0, 300, (37, 41)).astype(np.int32)
    with_torch = _bincount()(a, 400)
    monkeypatch.delitem(sys.modules, "torch")
    assert np.array_equal(_bincount()(a, 400), with_torch) and with_torch.sum() == a.size
