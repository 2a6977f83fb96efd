"""The evaluator's methods do what their sources did: subject-bootstrap intervals, impostor grouping in mean/gap
mode, the global vs per-group threshold, MixFairFace's instance threshold, FR-NAS's identification protocol and
fairness measures at alpha 0 or 1 (hand-computed values)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agebias.evaluate import metrics as M
from agebias.evaluate.allpairs import evaluate_embeddings_allpairs
from agebias.evaluate.fairness import fdr, garbe, inequity_rate
from agebias.evaluate.grouping import make_grouping
from agebias.evaluate.identification import identification_by_group
from agebias.evaluate.instance import mixfair_threshold
from agebias.evaluate.pairs import normalise
from agebias.evaluate.settings import EvalSettings

TINY = "iresnet:1,1,1,1@8,8,16,16"


def _correlated(n_subj=40, per=6, d=16, seed=0):
    """Subjects whose images scatter by a subject-level amount: pairs of one subject succeed or fail together."""
    rng = np.random.default_rng(seed)
    spread = rng.choice([0.2, 1.6], n_subj)  # tight or loose subjects
    subj = np.repeat(np.arange(n_subj), per)
    centres = rng.standard_normal((n_subj, d))
    emb = centres[subj] + spread[subj, None] * rng.standard_normal((subj.size, d))
    ages = np.where(np.arange(subj.size) % 2 == 0, 10, 30).tolist()  # two age groups, every subject in both
    return emb.astype(np.float32), [f"s{s}" for s in subj], ages


def test_subject_bootstrap_intervals_are_the_default_and_wider_than_clopper_pearson():
    emb, subj, ages = _correlated()
    st = EvalSettings(age_bins="0-19,20-39", target_fmr=1e-2, bootstrap=400, identification="off")
    res = evaluate_embeddings_allpairs(emb, subj, ages, st)
    widths = []
    for row in [res["overall"], *res["groups"].values()]:
        boot, pairs = row["fnmr_ci"], row["fnmr_pairs_ci"]
        # the pairs interval is Clopper-Pearson of the counts
        assert pairs == pytest.approx(list(M.clopper_pearson(row["false_non_matches"], row["n_genuine"])))
        assert boot[0] <= row["fnmr"] <= boot[1]
        widths.append((boot[1] - boot[0]) / (pairs[1] - pairs[0]))
    assert min(widths) > 1.3  # correlated pairs: the bootstrap is wider (FNMR: 3.5x overall, 1.5-1.6x per group)
    assert res["overall"]["fmr_pairs_ci"] == pytest.approx(
        list(M.clopper_pearson(res["overall"]["false_matches"], res["overall"]["n_impostor"])))
    assert "subjects" in res["intervals"]["fmr_ci, fnmr_ci"] and "independent" in \
        res["intervals"]["fmr_pairs_ci, fnmr_pairs_ci"]


def test_unit_subject_weights_reproduce_the_overall_and_genuine_set_rates():
    from agebias.evaluate.bootstrap import subject_bootstrap
    from agebias.evaluate.pairs import score_all_pairs

    emb, subj, ages = _correlated(n_subj=12)
    gp = make_grouping(ages, "both", "0-19,20-39")
    ps = score_all_pairs(emb, subj, gp)
    tau = float(np.quantile(ps.imp_score, 0.95))
    acc = ps.imp_score >= tau
    first_half = np.arange(ps.gen_score.size) < ps.gen_score.size // 2
    out = subject_bootstrap(gp, ps.subjects, ps.gen_i, ps.gen_j, ps.gen_score >= tau, ps.imp_i[acc], ps.imp_j[acc],
                            n_boot=1, weights=np.ones((1, 12)), genuine_sets={"half": first_half})
    assert out["overall_fmr_ci"] == pytest.approx([acc.mean()] * 2)
    assert out["overall_fnmr_ci"] == pytest.approx([(ps.gen_score < tau).mean()] * 2)
    assert out["genuine_set_fnmr_ci"]["half"] == pytest.approx([(ps.gen_score[first_half] < tau).mean()] * 2)


def test_resample_weights_are_draws_of_every_subject_with_replacement():
    from agebias.evaluate.bootstrap import resample_weights

    w = resample_weights(500, 400, np.random.default_rng(3))
    assert w.shape == (400, 500) and w.dtype == np.float64
    assert np.all(w.sum(axis=1) == 500)  # each replicate draws as many subjects as there are
    assert np.array_equal(w, resample_weights(500, 400, np.random.default_rng(3)))
    assert not np.array_equal(w[0], w[1])  # replicates differ
    # a subject's count in one replicate is Binomial(500, 1/500): P(0) ~ e^-1, P(1) ~ e^-1, P(2) ~ e^-1 / 2
    share = np.bincount(w.astype(np.int64).ravel(), minlength=4)[:3] / w.size
    assert share == pytest.approx([math.exp(-1), math.exp(-1), math.exp(-1) / 2], abs=0.01)
    assert abs(w.mean(axis=0) - 1).max() < 0.25  # no subject favoured across replicates
    big = resample_weights(100_000, 100, np.random.default_rng(3))  # drawn in chunks of 41 replicates
    assert np.all(big.sum(axis=1) == 100_000) and len({row.tobytes() for row in big}) == 100
    assert abs((big == 0).mean() - math.exp(-1)) < 0.005


def test_intervals_in_groups_csv_and_report_are_the_bootstrap_ones(tmp_path):
    from agebias.data.records import FaceRecord
    from agebias.evaluate.api import evaluate_records

    emb, subj, ages = _correlated(n_subj=20)
    records = [FaceRecord(path=Path(f"{i}.png"), subject=s, age=a) for i, (s, a) in enumerate(zip(subj, ages,
                                                                                                 strict=True))]
    st = EvalSettings(age_bins="0-19,20-39", target_fmr=1e-2, bootstrap=100, identification="off")
    result = evaluate_records(records, {"m": emb}, st)
    result.save(tmp_path)
    sec = json.loads((tmp_path / "results.json").read_text())["models"]["m"]
    rows = {r["group"]: r for r in csv.DictReader(open(tmp_path / "groups.csv"))}
    assert float(rows["0-19"]["fnmr_ci_low"]) == pytest.approx(sec["groups"]["0-19"]["fnmr_ci"][0])
    assert float(rows["overall"]["fmr_ci_high"]) == pytest.approx(sec["overall"]["fmr_ci"][1])
    md = (tmp_path / "report.md").read_text()
    assert "FNMR 95% CI (subjects)" in md and "assume independent pairs" in md


def _hand_ages():
    # A: 5, 10 | B: 6 | C: 65, 60 | D: 30      (age bins 0-12, 13-39, 40-69)
    subj = ["A", "A", "B", "C", "C", "D"]
    ages = [5, 10, 6, 65, 60, 30]
    emb = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    return emb, subj, ages


@pytest.mark.parametrize("mode", ["mean", "gap"])
def test_impostors_stay_within_one_age_group_in_mean_and_gap_mode(mode):
    emb, subj, ages = _hand_ages()
    st = EvalSettings(age_bins="0-12,13-39,40-69", pair_grouping=mode, bootstrap=0, identification="off",
                      target_fmr=0.1)
    res = evaluate_embeddings_allpairs(emb, subj, ages, st)
    n_imp = {g: d["n_impostor"] for g, d in res["groups"].items()}
    n_gen = {g: d["n_genuine"] for g, d in res["groups"].items()}
    if mode == "mean":
        # impostors: only A x B (A5-B6, A10-B6) share a group (0-12); A5-C65 has mean 35 but is no 13-39 pair
        assert n_imp == {"0-12": 2, "13-39": 0, "40-69": 0}
        assert n_gen == {"0-12": 1, "13-39": 0, "40-69": 1}  # A: mean 7.5; C: mean 62.5
    else:
        # genuine A (gap 5) and C (gap 5) in 0-5; impostors: A5-B6 (gap 1), A10-B6 (gap 4), both in age group 0-12
        assert n_gen == {"0-5": 2, "6-10": 0, "11-20": 0, "21+": 0}
        assert n_imp == {"0-5": 2, "6-10": 0, "11-20": 0, "21+": 0}
    cells = {k: v["n_impostor"] for k, v in res["impostor_table"].items()}
    # every cross-age impostor is still reported, in the age group x age group table
    assert cells == {"0-12|0-12": 2, "0-12|13-39": 3, "0-12|40-69": 6, "13-39|13-39": 0, "13-39|40-69": 2,
                     "40-69|40-69": 0}
    assert res["pair_grouping"]["cell_labels"] == ["0-12", "13-39", "40-69"]


def test_pair_keys_keep_genuine_and_impostor_groups_apart():
    gp = make_grouping([5, 65, 35], "mean", "0-12,13-39,40-69")
    i, j = np.array([0]), np.array([1])
    assert gp.genuine_groups(i, j).tolist() == [1]  # a genuine 5/65 pair: mean 35 -> 13-39
    assert gp.key_group[gp.pair_keys(i, j)].tolist() == [-1]  # the same pair as an impostor: no group


def test_small_gap_view_counts_same_group_pairs_with_gap_at_most_5():
    subj = ["A"] * 4 + ["B"] * 2
    ages = [20, 24, 30, 39, 13, 19]  # A: 20-24 (4), 20-30 (10), 24-30 (6), 20-39 ... ; B: 13-19 (6)
    emb = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    st = EvalSettings(age_bins="0-12,13-19,20-39", bootstrap=0, identification="off", target_fmr=0.1)
    res = evaluate_embeddings_allpairs(emb, subj, ages, st)
    small = res["groups_small_gap"]
    assert small["max_gap"] == 5
    n = {g: d["n_genuine"] for g, d in small["groups"].items()}
    assert n == {"0-12": 0, "13-19": 0, "20-39": 1}  # only A 20-24 (gap 4); B's 13-19 has gap 6
    assert res["groups"]["20-39"]["n_genuine"] == 6  # the default view mixes every gap


def test_fnmr_at_fmr_uses_the_global_threshold_and_fnmr_at_group_fmr_the_groups_own():
    emb, subj, ages = _correlated(n_subj=30, seed=4)
    st = EvalSettings(age_bins="0-19,20-39", bootstrap=0, identification="off", fmr_targets=(1e-2, 1e-1))
    res = evaluate_embeddings_allpairs(emb, subj, ages, st)
    e = normalise(emb).astype(np.float32)
    sc = e @ e.T
    iu, ju = np.triu_indices(len(subj), 1)
    s = np.array(subj)
    a = np.array(ages)
    same = s[iu] == s[ju]
    g0 = (a[iu] < 20) & (a[ju] < 20)
    tau_global, _ = M.threshold_at_fmr(sc[iu, ju][~same], 0.1)
    tau_group, _ = M.threshold_at_fmr(sc[iu, ju][~same & g0], 0.1)
    gen0 = sc[iu, ju][same & g0]
    grp = res["groups"]["0-19"]
    assert grp["fnmr_at_fmr_detail"]["0.1"]["threshold"] == pytest.approx(tau_global, abs=1e-6)
    assert grp["fnmr_at_fmr"]["0.1"] == pytest.approx((gen0 < tau_global).mean())
    assert grp["fnmr_at_group_fmr_detail"]["0.1"]["threshold"] == pytest.approx(tau_group, abs=1e-6)
    assert grp["fnmr_at_group_fmr"]["0.1"] == pytest.approx((gen0 < tau_group).mean())
    assert tau_global != pytest.approx(tau_group, abs=1e-4)


def test_mixfair_threshold_lands_just_above_the_target_fpr():
    imp = M.ExactDist(np.arange(1000) / 1000.0)  # 0.000 .. 0.999
    thr, fpr, converged = mixfair_threshold(imp, 0.01)
    # bisection midpoints 0, .5, .75, ..., .9921875 (FPR too low), .98828125: 11 scores above it, FPR 0.011 in
    # (0.01, 0.011]; agebias's own rule (FMR <= 0.01, score >= tau) would accept 10
    assert thr == 0.98828125 and converged and fpr == pytest.approx(0.011)
    assert M.threshold_at_fmr(imp, 0.01)[1] == pytest.approx(0.010)
    thr, fpr, converged = mixfair_threshold(M.ExactDist(np.arange(10) / 10.0), 1e-5)  # no FPR in the band
    assert not converged


def test_instance_level_accepts_strictly_above_mixfairface_threshold():
    emb, subj, ages = _correlated(n_subj=25, seed=5)
    st = EvalSettings(age_bins="0-19,20-39", bootstrap=0, identification="off", instance_fpr=1e-2)
    inst = evaluate_embeddings_allpairs(emb, subj, ages, st)["instance_level"]
    e = normalise(emb)
    sc = (e @ e.T).astype(np.float64)
    s = np.array(subj)
    iu, ju = np.triu_indices(len(s), 1)
    thr, fpr, _ = mixfair_threshold(M.ExactDist(sc[iu, ju][s[iu] != s[ju]]), 1e-2)
    assert inst["threshold"] == thr and inst["realised_fpr"] == pytest.approx(fpr) and fpr > 1e-2
    off = ~np.eye(len(s), dtype=bool)
    tpr = [((sc[i] > thr) & (s == s[i]) & off[i]).sum() / ((s == s[i]) & off[i]).sum() for i in range(len(s))]
    per_id = [np.mean([tpr[i] for i in np.flatnonzero(s == t)]) for t in np.unique(s)]
    assert inst["overall"]["tpr_mean"] == pytest.approx(np.mean(per_id))


def _angles(deg):
    r = np.radians(deg)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_frnas_identification_counts_images_without_a_mate_as_errors():
    # A1 0 deg, A2 10 deg | B1 100 deg (no mate) | C1 95 deg, C2 130 deg (B1 is closer to each C than its mate)
    emb = _angles([0, 10, 100, 95, 130])
    subjects = np.array([0, 0, 1, 2, 2])
    groups = np.array([0, 0, 1, 1, 1])
    res = identification_by_group(emb, subjects, groups, ["young", "old"], flip_fused=True)
    o = res["groups"]["overall"]
    assert o["n_probes"] == 5 and o["n_without_mate"] == 1
    assert o["rank1_accuracy"] == pytest.approx(2 / 5)  # A1, A2 right; B1 (no mate), C1, C2 wrong
    assert o["mean_rank_by_identity"] == pytest.approx((0 + 0 + 1 + 1) / 4)  # over images with a mate
    assert res["groups"]["old"]["rank1_accuracy"] == 0.0 and res["groups"]["young"]["rank1_accuracy"] == 1.0
    assert res["flip_fused"] is True


def test_identification_uses_flip_fused_embeddings_from_the_models(tmp_path):
    import torch

    from agebias.cli import main
    from agebias.data.faces import load_aligned_faces
    from agebias.data.sources import open_dataset
    from agebias.models.checkpoints import save_backbone
    from agebias.models.embedder import build_embedder
    from agebias.models.registry import create_backbone

    rng = np.random.default_rng(0)
    root = tmp_path / "set"
    for i in range(5):
        base = np.kron(rng.integers(0, 256, (7, 7, 3)).astype(np.float32), np.ones((16, 16, 1)))
        (root / f"id{i}").mkdir(parents=True)
        for a in range(3 if i else 1):  # id0 has one image: no mate
            img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"id{i}" / f"id{i}_{5 + 20 * a}.png")
    torch.manual_seed(0)
    model = save_backbone(create_backbone(TINY).eval(), tmp_path / "tiny.pth")
    out = tmp_path / "out"
    assert main(["-q", "evaluate", "dataset", str(root), "--model", str(model), "--arch", TINY, "--aligned",
                 "--device", "cpu", "--bootstrap", "0", "--out", str(out)]) == 0
    sec = json.loads((out / "results.json").read_text())["models"]["tiny"]
    ident = sec["identification"]
    assert ident["flip_fused"] is True and ident["groups"]["overall"]["n_without_mate"] == 1
    scan = open_dataset(root, check_files=True)
    faces = load_aligned_faces(scan.records, aligned=True, cache_dir=False, progress=None)
    fused = build_embedder(str(model), arch=TINY, device="cpu", flip=True).embed(faces.crops)
    _, codes = np.unique([r.subject for r in faces.records], return_inverse=True)
    from agebias.evaluate.grouping import image_groups

    expected = identification_by_group(fused, codes, image_groups([r.age for r in faces.records]),
                                       ["0-12", "13-19", "20-39", "40-69"], flip_fused=True)
    assert ident["groups"]["overall"]["rank1_accuracy"] == expected["groups"]["overall"]["rank1_accuracy"]
    assert ident["groups"]["overall"]["mean_rank_by_image"] == pytest.approx(
        expected["groups"]["overall"]["mean_rank_by_image"])


def test_alpha_zero_or_one_drops_the_unused_term():
    fmr, fnmr = [0.0, 0.0], [0.1, 0.3]  # GARBE's FMR Gini is undefined (mean 0)
    assert math.isnan(garbe(fmr, fnmr, 0.5))
    assert garbe(fmr, fnmr, 0.0) == pytest.approx(0.5)  # |0.1 - 0.3| / (0.1 + 0.3)
    assert garbe([0.1, 0.3], [0.0, 0.0], 1.0) == pytest.approx(0.5)
    assert inequity_rate(fmr, fnmr, 0.0) == pytest.approx(3.0)  # max/min FNMR; the FMR ratio (0/0) not used
    assert inequity_rate([0.1, 0.4], [0.0, 0.2], 1.0) == pytest.approx(4.0)
    assert fdr([math.nan, math.nan], fnmr, 0.0) == pytest.approx(0.8)


def test_msc_garbe_at_alpha_zero_is_defined_where_fmr_is_zero():
    from agebias.evaluate.msc import evaluate_msc

    emb = normalise(np.random.default_rng(3).standard_normal((12, 8)))
    subj = [f"s{k // 4}" for k in range(12)]
    ages = [6, 8, 10, 50] * 3
    half = evaluate_msc(emb, subj, ages, EvalSettings(protocol="msc", alpha=0.5))["garbe_sweep"]
    zero = evaluate_msc(emb, subj, ages, EvalSettings(protocol="msc", alpha=0.0))["garbe_sweep"]
    top = len(zero["threshold"]) - 1  # t = 0.975: no impostor mean reaches it, FMR 0 in both groups
    assert zero["fmr_young"][top] == 0.0 and zero["fmr_old"][top] == 0.0
    assert math.isnan(half["garbe"][top]) and not math.isnan(zero["garbe"][top])


def test_an_interval_never_collapses_where_no_error_was_seen():
    """FNMR 0 resamples to [0, 0] in every bootstrap replicate; the reported interval keeps Clopper-Pearson's width."""
    import agebias

    rng = np.random.default_rng(1)
    subj = np.repeat(np.arange(12), 6)
    emb = rng.normal(size=(12, 32))[subj] + 0.2 * rng.normal(size=(72, 32))  # every genuine pair far above tau
    res = agebias.evaluate(emb, subj, rng.integers(0, 70, 72), bootstrap=100, target_fmr=0.01)
    for group, row in res.by_group.iterrows():
        if row["n_genuine"] and row["fnmr"] == 0:
            assert row["fnmr_ci_high"] == pytest.approx(row["fnmr_pairs_ci_high"]) and row["fnmr_ci_high"] > 0, group
    assert res.overall["fnmr"] == 0 and res.overall["fnmr_ci"][1] > 0
    assert "widened" in res.section()["intervals"]["fmr_ci, fnmr_ci"]
