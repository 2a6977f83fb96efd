"""Identification ranks, the instance-level protocol and the legacy MSc protocol against brute force."""

import math

import numpy as np
import pytest

from agebias.evaluate.identification import identification_by_group, ranks
from agebias.evaluate.instance import instance_level
from agebias.evaluate.msc import evaluate_msc
from agebias.evaluate.pairs import normalise
from agebias.evaluate.settings import EvalSettings


def _emb(n_subj=9, per=5, d=8, seed=0):
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n_subj), per)
    e = rng.standard_normal((n_subj, d))[subj] + 1.3 * rng.standard_normal((subj.size, d))
    perm = rng.permutation(subj.size)
    return normalise(e[perm]), subj[perm]


def test_ranks_brute_force():
    e, s = _emb()
    r_img, r_id, probe = ranks(e, s, block=7)
    sc = e.astype(np.float64) @ e.T.astype(np.float64)
    for i in range(s.size):
        same = (s == s[i]) & (np.arange(s.size) != i)
        g = sc[i, same].max()
        imp = sc[i, s != s[i]]
        assert r_img[i] == (imp > g + 1e-7).sum() or r_img[i] == (imp > g - 1e-7).sum()
        best = [sc[i, s == t].max() for t in np.unique(s) if t != s[i]]
        assert r_id[i] == sum(b > g for b in best)
    assert probe.all()


def test_identification_groups_and_disparity():
    e, s = _emb(seed=2)
    groups = np.arange(s.size) % 2
    res = identification_by_group(e, s, groups, ["a", "b"])
    r_img, r_id, _ = ranks(e, s)
    acc_a = (r_id[groups == 0] == 0).mean()
    acc_b = (r_id[groups == 1] == 0).mean()
    assert res["groups"]["a"]["rank1_accuracy"] == pytest.approx(acc_a)
    assert res["disparity"] == pytest.approx(abs(acc_a - acc_b))


def test_instance_level_brute_force():
    e, s = _emb(seed=4)
    n = s.size
    sc = (e @ e.T).astype(np.float32)
    iu, ju = np.triu_indices(n, 1)
    gen = s[iu] == s[ju]
    tau = float(np.quantile(sc[iu[~gen], ju[~gen]], 0.95))
    acc = (~gen) & (sc[iu, ju] >= tau)
    grp = np.arange(n) % 3
    res = instance_level(s, grp, ["x", "y", "z"], iu[gen], ju[gen], sc[iu[gen], ju[gen]], iu[acc], ju[acc], tau,
                         0.05, 0.05)
    tpr, fpr = np.zeros(n), np.zeros(n)
    for i in range(n):
        m = (s == s[i]) & (np.arange(n) != i)
        tpr[i] = (sc[i, m] >= tau).mean()
        fpr[i] = (sc[i, s != s[i]] >= tau).mean()
    per_id = [tpr[s == t].mean() for t in np.unique(s)]
    assert res["overall"]["tpr_mean"] == pytest.approx(np.mean(per_id))
    assert res["overall"]["tpr_std"] == pytest.approx(np.std(per_id))
    per_id_y = [fpr[(s == t) & (grp == 1)].mean() for t in np.unique(s) if ((s == t) & (grp == 1)).any()]
    assert res["groups"]["y"]["fpr_mean"] == pytest.approx(np.mean(per_id_y))


def test_msc_protocol_hand_case():
    # identity A: ages 10, 12, 14 (young consecutive), 25, 55; identity B: 25, 26; C: 30 only
    e = normalise(np.array([[1, 0], [1, 1], [0, 1], [1, 0.2], [0.5, 1], [1, -0.5], [1, -0.4], [-1, 0.1]], float))
    subj = ["A", "A", "A", "A", "A", "B", "B", "C"]
    ages = [10, 12, 14, 25, 55, 25, 26, 30]
    r = evaluate_msc(e, subj, ages, EvalSettings(protocol="msc"))
    young = np.mean([e[0] @ e[1], e[1] @ e[2]])
    assert r["columns"]["mated_young"]["A"] == pytest.approx(young)
    assert math.isnan(r["columns"]["mated_young"]["B"])
    assert r["columns"]["young_vs_old"]["A"] == pytest.approx(e[3] @ e[4])
    nm = np.mean([e[3] @ e[k] for k in (5, 6, 7)])
    assert r["columns"]["non_mated"]["A"] == pytest.approx(nm)
    sw = r["garbe_sweep"]
    # young 5-20: only A has a pair; B and C (no pair, NaN) are false non-matches at every threshold (legacy flaw)
    assert sw["fnmr_young"][0] == pytest.approx(2 / 3)
    assert r["legacy"] is True and any("NaN" in f for f in r["flaws"])


@pytest.mark.slow
def test_evaluate_bin_with_sface(tmp_path, monkeypatch):
    """A tiny .bin in insightface's format (real aligned photo variants vs. noise) through `agebias evaluate bin`."""
    import io
    import json
    import pickle

    from PIL import Image, ImageEnhance

    from helpers_faces import tom_hanks_aligned

    from agebias.cli import main

    src = tom_hanks_aligned()
    if src is None:
        pytest.skip("insightface sample photo not installed")
    monkeypatch.setenv("AGEBIAS_QUIET", "1")
    face = Image.open(src).convert("RGB")
    rng = np.random.default_rng(0)

    def enc(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    bins, issame = [], []
    for k in range(20):
        if k % 2 == 0:  # same person: the photo and a brightened / mirrored copy
            other = ImageEnhance.Brightness(face).enhance(0.8 + 0.02 * k)
            bins += [enc(face), enc(other.transpose(Image.FLIP_LEFT_RIGHT) if k % 4 else other)]
            issame.append(True)
        else:
            noise = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
            bins += [enc(face), enc(noise)]
            issame.append(False)
    path = tmp_path / "tiny.bin"
    path.write_bytes(pickle.dumps((bins, issame)))
    rc = main(["evaluate", "bin", str(path), "--model", "sface", "--json", str(tmp_path / "bin.json")])
    assert rc == 0
    r = json.loads((tmp_path / "bin.json").read_text())["models"]["sface"]
    assert len(r["fold_accuracies"]) == 10 and r["n_pairs"] == 20
    assert r["accuracy_mean"] >= 0.9  # identical faces vs noise are easy for a real model


def test_rank1_from_pass_one_matches_full_ranks():
    from agebias.evaluate.grouping import make_grouping
    from agebias.evaluate.identification import rank1_from_pairs
    from agebias.evaluate.pairs import score_all_pairs

    e, s = _emb(n_subj=12, per=4, seed=6)
    grp = np.arange(s.size) % 2
    ps = score_all_pairs(e, s, make_grouping([20] * s.size), block=11)
    quick = rank1_from_pairs(s.size, ps.gen_i, ps.gen_j, ps.gen_score, ps.max_impostor, grp, ["a", "b"])
    full = identification_by_group(e, s, grp, ["a", "b"])
    for g in ("overall", "a", "b"):
        assert quick["groups"][g]["rank1_accuracy"] == pytest.approx(full["groups"][g]["rank1_accuracy"])
    assert math.isnan(quick["groups"]["a"]["mean_rank_by_identity"])


def test_evaluate_bin_too_few_pairs_is_a_user_error(tmp_path, capsys):
    """An empty .bin ended in a numpy traceback; fewer than 10 pairs gave NaN fold accuracies and exit 0."""
    import io
    import pickle

    from PIL import Image

    from agebias.cli import main

    buf = io.BytesIO()
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(buf, format="PNG")
    for n in (0, 2):
        path = tmp_path / f"n{n}.bin"
        path.write_bytes(pickle.dumps(([buf.getvalue()] * (2 * n), [True] * n)))
        assert main(["evaluate", "bin", str(path), "--model", "sface", "--json", str(tmp_path / "o.json")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "at least 10" in err
    assert not (tmp_path / "o.json").exists()
