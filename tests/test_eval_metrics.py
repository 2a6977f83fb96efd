"""Pinned verification metrics and fairness measures against hand-computed cases and scikit-learn."""

import math

import numpy as np
import pytest

from agebias.evaluate import fairness as F
from agebias.evaluate import metrics as M


def test_rates_accept_iff_ge_with_ties():
    gen = [0.5, 0.7, 0.9]
    imp = [0.1, 0.5, 0.5, 0.3]
    r = M.rates_at(gen, imp, 0.5)
    assert (r.false_matches, r.false_non_matches) == (2, 0)  # ties at tau are accepted
    assert r.fmr == 0.5 and r.fnmr == 0.0
    r = M.rates_at(gen, imp, 0.7)
    assert r.fmr == 0.0 and r.fnmr == pytest.approx(1 / 3)


def test_empty_denominators_are_nan_with_counts():
    r = M.rates_at([], [0.1, 0.2], 0.15)
    assert math.isnan(r.fnmr) and r.n_genuine == 0 and r.fmr == 0.5
    assert all(math.isnan(x) for x in r.fnmr_ci)
    r = M.rates_at([0.9], [], 0.5)
    assert math.isnan(r.fmr) and r.n_impostor == 0 and r.fnmr == 0.0
    tau, f = M.threshold_at_fmr([], 1e-3)
    assert math.isnan(tau) and math.isnan(f)
    e, t = M.eer([], [0.1])
    assert math.isnan(e) and math.isnan(t)
    assert math.isnan(M.auc([0.1], []))


def test_threshold_at_fmr_smallest_tau_with_ties():
    imp = [0.1, 0.2, 0.3, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    # target 0.2 -> at most 2 false matches: tau just above the 3rd largest (0.7)
    tau, f = M.threshold_at_fmr(imp, 0.2)
    assert tau > 0.7 and tau == np.nextafter(0.7, 1) and f == 0.2
    # target 0.4 -> k=4: the 5th largest is 0.5 -> tau just above 0.5, FMR 0.4
    tau, f = M.threshold_at_fmr(imp, 0.4)
    assert tau == np.nextafter(0.5, 1) and f == pytest.approx(0.4)
    # target 0.6 -> k=6, 7th largest is 0.4 (tied with 6th): tau just above 0.4; realised 0.5 < target
    tau, f = M.threshold_at_fmr(imp, 0.6)
    assert tau == np.nextafter(0.4, 1) and f == pytest.approx(0.5)
    # target 0 -> nothing accepted
    tau, f = M.threshold_at_fmr(imp, 0.0)
    assert tau > 0.9 and f == 0.0
    # float rounding of target * n: 0.29 * 100 = 28.999...
    assert M.max_allowed_false_matches(0.29, 100) == 29
    assert M.threshold_at_fmr(imp, 1.0)[1] == 1.0


def test_eer_hand_computed():
    # separable: EER 0 at the midpoint between max impostor and min genuine
    e, t = M.eer([0.8, 0.9], [0.1, 0.2, 0.3])
    assert e == 0.0 and t == pytest.approx(0.55)
    # overlapping with a tie: gen {0.4,0.6,0.8}, imp {0.2,0.4,0.5,0.7}
    # candidates u: 0.2 .4 .5 .6 .7 .8 (+end): FMR 1, .75, .5, .25, .25, 0, 0 ; FNMR 0, 0, 1/3, 1/3, 2/3, 2/3, 1
    e, t = M.eer([0.4, 0.6, 0.8], [0.2, 0.4, 0.5, 0.7])
    # |diff|: 1, .75, .1667, .0833, .4167, .6667 -> min at u=0.6 (tau midpoint 0.55)
    assert t == pytest.approx(0.55) and e == pytest.approx((0.25 + 1 / 3) / 2)
    # genuine below impostors: FMR = FNMR = 1 between them (tau = 0.5)
    e, t = M.eer([0.1], [0.9])
    assert e == pytest.approx(1.0) and t == pytest.approx(0.5)


def test_d_prime_population_variance():
    gen = [0.6, 0.8]
    imp = [0.0, 0.2, 0.4]
    vg, vi = np.var(gen), np.var(imp)
    assert M.d_prime(gen, imp) == pytest.approx(abs(0.7 - 0.2) / math.sqrt((vg + vi) / 2))


def test_auc_and_roc_match_sklearn():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(1)
    gen = np.round(rng.normal(0.6, 0.15, 300), 2)  # rounding makes many ties
    imp = np.round(rng.normal(0.2, 0.15, 900), 2)
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    s = np.r_[gen, imp]
    assert M.auc(gen, imp) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ofmr, otmr, othr = M.roc_curve(gen, imp)
    np.testing.assert_allclose(ofmr, fpr)
    np.testing.assert_allclose(otmr, tpr)
    np.testing.assert_allclose(othr[1:], thr[1:])
    det = M.det_curve(gen, imp, max_points=50)
    assert det["fmr"].size <= 60 and np.all(np.diff(det["fmr"]) >= 0)


def test_clopper_pearson_known_values():
    lo, hi = M.clopper_pearson(0, 10)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 10))
    lo, hi = M.clopper_pearson(5, 10)
    assert lo == pytest.approx(0.187086, abs=1e-5) and hi == pytest.approx(0.812914, abs=1e-5)


def test_worked_fairness_example():
    fmr = [0.001, 0.002, 0.004]
    fnmr = [0.02, 0.03, 0.05]
    assert F.garbe(fmr, fnmr, 0.5) == pytest.approx(0.3642857, abs=1e-7)
    assert F.fdr(fmr, fnmr, 0.5) == pytest.approx(0.9835, abs=1e-12)
    assert F.inequity_rate(fmr, fnmr, 0.5) == pytest.approx(3.1622777, abs=1e-7)
    assert F.gini([1, 3]) == pytest.approx(2 / 4)  # n = 2: |x1-x2| / (x1+x2)


def test_fairness_undefined_cases():
    assert math.isnan(F.garbe([0, 0], [0.1, 0.2]))  # mean FMR 0
    assert math.isnan(F.inequity_rate([0, 0.1], [0.1, 0.2]))
    assert F.fdr([0, 0], [0.1, 0.3]) == pytest.approx(0.9)
    # a group with no impostors (NaN FMR) is left out of the FMR term
    assert F.gini([math.nan, 1, 3]) == pytest.approx(0.5)


def test_group_table_disparities():
    mk = lambda fm, n_i, fnm, n_g: M.rates_at([1.0] * (n_g - fnm) + [0.0] * fnm, [1.0] * fm + [0.0] * (n_i - fm), 0.5)
    t = F.GroupTable(0.5, {"a": mk(1, 100, 2, 10), "b": mk(4, 100, 1, 10), "c": mk(0, 0, 1, 10)},
                     mk(5, 200, 4, 30))
    d = t.disparities()
    assert d["fmr"]["max_group"] == "b" and d["fmr"]["ratio"] == pytest.approx(4.0)
    assert d["fnmr"]["difference"] == pytest.approx(0.1)
    fair = t.fairness()
    assert fair["undefined_fmr_groups"] == ["c"] and fair["n_groups_fmr"] == 2
    rows = t.rows()
    assert rows[-1]["group"] == "overall" and rows[2]["n_impostor"] == 0


def test_undefined_fairness_is_explained():
    from agebias.evaluate.allpairs import undefined_fairness_warnings

    assert undefined_fairness_warnings([0.01, 0.02], [0.1, 0.2]) == []
    all_zero = undefined_fairness_warnings([0.01, 0.02], [0.0, 0.0])
    assert len(all_zero) == 1 and "FNMR is 0 in every age group" in all_zero[0]
    some_zero = undefined_fairness_warnings([0.0, 0.02, float("nan")], [0.1, 0.2])
    assert len(some_zero) == 1 and "IR is undefined: FMR is 0 in some" in some_zero[0]
