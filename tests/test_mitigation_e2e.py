"""End to end: each mitigation method fine-tunes a tiny iresnet on a tiny generated set (same seed as a plain
run), its own loss terms are logged, and the per-age-group metrics it targets move away from the plain run's.

At this scale (random init, 8 identities, 3 epochs) the *direction* of a change says little, so the test checks
that every method trains and acts on the groups; it prints the per-group table for the record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from test_search_workers import make_generated_set  # noqa: E402  (tests/ is on sys.path under pytest)

ARCH = "iresnet:1,1,1,1@8,8,16,16"
BINS_TRAIN = BINS_EVAL = "0-9,10-19,20-69"


def _train(data, out, mitigation):
    from agebias.finetune.config import FinetuneConfig
    from agebias.finetune.trainer import run_finetune

    return run_finetune(FinetuneConfig(
        data=[str(data)], backbone=ARCH, init="random", out=str(out), aligned=True, frozen_layers="1,2", epochs=3,
        batch_size=12, age_bins=BINS_TRAIN, mitigation=mitigation, tensorboard=False, scale=16.0, lr=0.05,
        head="cosface", margin=0.2, val_fraction=0.25, seed=0))


def _group_metrics(result, faces):
    """Per age group on all images: FMR/FNMR at the global FMR-0.1 tau and the mean genuine cosine."""
    from agebias.models.embedder import build_embedder
    from agebias.search.objectives import pair_metrics

    emb = build_embedder(str(result.backbone_path), arch=ARCH).embed(faces.crops)
    subjects, ages = [r.subject for r in faces.records], [r.age for r in faces.records]
    m = pair_metrics(emb, subjects, ages, BINS_EVAL, fmr=0.1)
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    groups = np.array([0 if a < 10 else 1 if a < 20 else 2 for a in ages])
    gen = []
    for g in range(3):
        idx = np.flatnonzero(groups == g)
        sims = [float(e[i] @ e[j]) for a, i in enumerate(idx) for j in idx[a + 1:] if subjects[i] == subjects[j]]
        gen.append(float(np.mean(sims)))
    return np.array([v for r in m["groups"] for v in (r["fmr"], r["fnmr"])] + gen)


@pytest.mark.slow
def test_every_method_trains_and_moves_the_group_metrics(tmp_path):
    from agebias.data.faces import load_aligned_faces
    from agebias.data.sources import open_dataset

    data = make_generated_set(tmp_path / "data", n_ids=8)
    faces = load_aligned_faces(open_dataset(data, "generated").records, aligned=True)
    plain = _train(data, tmp_path / "none", None)
    plain_metrics = _group_metrics(plain, faces)
    plain_head = plain.rows[-1]["head_loss"]
    cases = {
        "label-flip:p=1.0,group=0": (),
        "group-margin:margins=0.0/0.0/0.6": (),
        "adversarial:warmup=3,weight=5": ("adv_disc", "adv_penalty"),
        "mixfair": (),
        "ddl:topk=0,bins=10": ("ddl",),
    }
    table = {"none": plain_metrics.round(3).tolist()}
    for spec, terms in cases.items():
        name = spec.split(":")[0]
        res = _train(data, tmp_path / name, spec)
        cfg = json.loads((res.run_dir / "config.json").read_text())
        assert json.dumps(cfg).count(name) >= 1  # the method is recorded with the run
        assert res.backbone_path.is_file()
        assert all(math.isfinite(row["loss"]) for row in res.rows)
        for term in terms:
            assert all(term in row and math.isfinite(row[term]) for row in res.rows), term
        metrics = _group_metrics(res, faces)
        table[name] = metrics.round(3).tolist()
        assert not np.allclose(metrics, plain_metrics, atol=1e-4), f"{name} left the group metrics unchanged"
        if name == "label-flip":  # the flipped group (0) loses the most identity similarity
            drop = plain_metrics[6:] - metrics[6:]
            assert drop[0] > drop[1] and drop[0] > drop[2]
        if name in ("label-flip", "group-margin"):
            # flipped labels / larger margins in one group keep the head's loss above the plain run's
            assert res.rows[-1]["head_loss"] > plain_head
        if name == "adversarial":
            assert res.rows[-1]["adv_penalty"] > 0  # the penalty is active after the warm-up
    print("\nper group (FMR, FNMR) x 3, then mean genuine cosine x 3:")
    for k, v in table.items():
        print(f"  {k:14s} {v}")
