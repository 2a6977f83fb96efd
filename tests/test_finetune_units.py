"""Fine-tuning building blocks: freezing, data split and order, age bins, validation metrics, config, hooks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agebias.errors import UserError
from agebias.finetune.config import FinetuneConfig, diff_keys
from agebias.data.ages import AgeBins
from agebias.finetune.data import epoch_batches, epoch_order, parse_source, split_identities
from agebias.finetune.freeze import freeze, parse_frozen_layers, prefix_depth, set_train_mode
from agebias.finetune.hooks import TrainingHooks, create_hooks
from agebias.finetune.validation import validate_embeddings
from agebias.mitigation.registry import Param, register_mitigation
from agebias.models.iresnet import IResNet


def test_parse_frozen_layers_layer1_takes_the_stem():
    assert parse_frozen_layers("1,2,3") == ("stem", "layer1", "layer2", "layer3")
    assert parse_frozen_layers("3, layer2") == ("layer2", "layer3")
    assert parse_frozen_layers("stem") == ("stem",)
    assert parse_frozen_layers("none") == () == parse_frozen_layers("")
    with pytest.raises(UserError, match="frozen-layers"):
        parse_frozen_layers("5")
    assert prefix_depth(("stem", "layer1", "layer3")) == 2
    assert prefix_depth(("layer1",)) == 0


def test_freeze_sets_requires_grad_and_eval_mode_survives_train():
    model = IResNet((1, 1, 1, 1), widths=(4, 4, 8, 8))
    summary = freeze(model, parse_frozen_layers("1,2,3"))
    assert summary.prefix_depth == 4
    assert not any(p.requires_grad for m in (model.conv1, model.layer1, model.layer3) for p in m.parameters())
    assert all(p.requires_grad for p in model.layer4.parameters())
    assert not model.features.weight.requires_grad and model.features.bias.requires_grad
    set_train_mode(model, summary.parts)
    assert not model.bn1.training and not model.layer2[0].bn1.training and model.layer4[0].bn1.training
    assert summary.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_freeze_rejects_non_iresnet():
    with pytest.raises(UserError, match="iresnet.*--frozen-layers none"):  # says how to train e.g. a timm model
        freeze(torch.nn.Linear(2, 2), ("layer1",))


def test_parse_source_weights():
    assert parse_source("synth/:0.5").weight == 0.5 and parse_source("synth/:0.5").path == "synth/"
    assert parse_source("C:/data/x.csv").path == "C:/data/x.csv"
    assert parse_source("real.csv").weight == 1.0
    with pytest.raises(UserError):
        parse_source("a:-1")


def test_age_bins_are_the_evaluators_inclusive_ranges():
    bins = AgeBins.parse("0-12,13-19,20+")
    assert bins.labels == ["0-12", "13-19", "20+"]
    assert bins.assign([0, 12, 13, 19, 70, None]).tolist() == [0, 0, 1, 1, 2, -1]
    assert AgeBins.parse("5-20,45-70").assign([5, 20, 30, 70, 71]).tolist() == [0, 0, -1, 1, -1]
    with pytest.raises(UserError):
        AgeBins.parse("0-20,20-45")  # overlapping ranges: 20 would be in both


def test_identity_split_deterministic_and_disjoint():
    subjects = [f"p{i}" for i in range(10) for _ in range(3)] + ["single"]
    tr, va = split_identities(subjects, 0.2, seed=1)
    assert (tr, va) == split_identities(subjects, 0.2, seed=1)
    assert len(va) == 2 and not tr & va and "single" in tr
    assert split_identities(subjects, 0.2, seed=2) != (tr, va) or True  # other seeds may differ
    with pytest.raises(UserError, match="at least 2 identities with >= 2 images"):
        split_identities(["a", "b", "c", "c"], 0.5, seed=0)
    assert split_identities(["a", "b"], 0.0, seed=0) == ({"a", "b"}, set())


def test_epoch_order_weights_and_ddp_batches():
    src = np.array([0] * 10 + [1] * 6)
    order = epoch_order(src, [1.0, 0.5], seed=0, epoch=0)
    assert len(order) == 13 and sorted(order[src[order] == 0].tolist()) == list(range(10))
    assert np.array_equal(order, epoch_order(src, [1.0, 0.5], seed=0, epoch=0))
    assert not np.array_equal(order, epoch_order(src, [1.0, 0.5], seed=0, epoch=1))
    assert len(epoch_order(src, [2.0, 0.0], seed=0, epoch=0)) == 20
    b0, b1 = epoch_batches(order, 4, 0, 2), epoch_batches(order, 4, 1, 2)
    assert len(b0) == len(b1) and not set(np.concatenate(b0)) & set(np.concatenate(b1))
    assert all(len(b) >= 2 for b in epoch_batches(np.arange(9), 4))  # a batch of 1 is dropped


def test_validation_follows_the_pinned_conventions():
    # a, b, c: genuine scores 1, 1, 0.8; impostors 0 x2, 0.6 x6, 0.8 x2, 1 x2 (12 pairs)
    emb = np.array([[1, 0], [1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1], [0.6, 0.8]])
    res = validate_embeddings(emb, ["a", "a", "b", "b", "c", "c"])
    # tau in (0.8, 1): FMR 2/12, FNMR 1/3 -> |FMR - FNMR| = 1/6, the smallest -> EER (1/6 + 1/3) / 2
    assert res.eer == pytest.approx(0.25)
    # FMR 1e-3 of 12 impostors allows no false match: tau just above the top impostor (1.0) rejects every genuine
    assert res.fnmr_at_fmr == 1.0 and res.fmr_realised == 0.0
    assert res.as_dict() == {"val_eer": res.eer, "val_fnmr_at_fmr_1e-3": 1.0, "val_fmr_realised": 0.0,
                             "val_genuine_pairs": 3, "val_impostor_pairs": 12}


def test_validation_counts_every_pair_and_undefined_cases():
    emb = np.eye(4)[[0, 0, 1, 2, 2, 2]] + 0.01
    res = validate_embeddings(emb, ["a", "a", "b", "c", "c", "c"])
    assert (res.n_genuine, res.n_impostor) == (1 + 3, 15 - 4)  # all impostor pairs, none sampled away
    assert res.eer == 0.0 and res.fnmr_at_fmr == 0.0  # genuine ~1, impostors ~0
    alone = validate_embeddings(emb[:2], ["a", "a"])  # one identity: no impostor pair
    assert alone.n_impostor == 0 and math.isnan(alone.eer) and math.isnan(alone.fnmr_at_fmr)
    diverged = validate_embeddings(np.full((4, 3), np.nan), ["a", "a", "b", "b"])
    assert math.isnan(diverged.eer) and (diverged.n_genuine, diverged.n_impostor) == (2, 4)


def test_config_roundtrip_hash_and_validation():
    cfg = FinetuneConfig(data=["x"], backbone="b.pth", out="o")
    again = FinetuneConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    moved = FinetuneConfig.from_dict({**cfg.to_dict(), "out": "elsewhere", "resume": True, "device": "cpu"})
    assert moved.config_hash() == cfg.config_hash()
    other = FinetuneConfig.from_dict({**cfg.to_dict(), "lr": 0.1})
    assert other.config_hash() != cfg.config_hash()
    assert diff_keys(cfg.to_dict(), other.to_dict()) == ["lr"]
    with pytest.raises(UserError, match="unknown finetune setting"):
        FinetuneConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(UserError, match="'head': unknown value 'softmax'"):
        FinetuneConfig(data=["x"], backbone="b", out="o", head="softmax")
    assert FinetuneConfig(data=["x"], backbone="b", out="o", head="combined", margin="1.0,0.3,0.2").head_kwargs() \
        == {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2}


def test_config_checks_late_parsed_settings_and_types_up_front():
    # these used to fail only after the data had been read and aligned (or with a TypeError traceback)
    base = dict(data=["x"], backbone="b.pth", out="o")
    for bad, words in [({"mitigation": "label-flip:q=1"}, "no parameter 'q'"), ({"mitigation": "nope"}, "unknown"),
                       ({"frozen_layers": "5"}, "--frozen-layers"), ({"margin": "abc"}, "'margin'"),
                       ({"age_bins": "old"}, "age bin"), ({"epochs": "2"}, "'epochs': must be a whole number"),
                       ({"lr": "0.1"}, "'lr': must be a number"), ({"aligned": 1}, "'aligned': must be true or false"),
                       ({"head": 3}, "'head': must be a string")]:
        with pytest.raises(UserError, match=words):
            FinetuneConfig(**{**base, **bad})
    with pytest.raises(UserError, match="missing required setting.*: backbone"):
        FinetuneConfig.from_dict({"data": ["x"], "out": "o"})
    ok = FinetuneConfig(**base, epochs=3, lr=1, warmup_epochs=0, mitigation="ddl:bins=10")  # ints for floats are fine
    assert ok.lr == 1 and ok.mitigation == "ddl:bins=10"


def test_hook_registry():
    assert type(create_hooks(None)) is TrainingHooks and type(create_hooks("none")) is TrainingHooks

    class Doubler(TrainingHooks):
        name = "test-doubler"

        def extra_loss(self, ctx):
            return {"double": ctx.loss * 1.0}

    register_mitigation("test-doubler", "doubles the loss", (Param("x", "int", 0, "unused"),))(lambda spec: Doubler())
    assert isinstance(create_hooks("test-doubler:x=1"), Doubler)
    with pytest.raises(UserError, match="unknown mitigation"):
        create_hooks("no-such-method")


def test_cache_storage_choice_and_order(tmp_path):
    from agebias.finetune.cache import build_cache, choose_storage

    assert choose_storage(1 << 20) == "ram" and choose_storage(1 << 50) == "disk"
    assert choose_storage(1 << 50, "ram") == "ram"
    images = torch.arange(10, dtype=torch.float32).view(10, 1, 1, 1).expand(10, 1, 2, 2)
    for mode in ("ram", "disk"):
        cache = build_cache(lambda x: x * 2, lambda idx: images[torch.as_tensor(idx)], 10, sample_shape=(1, 2, 2),
                            mode=mode, folder=tmp_path, batch_size=3)
        assert cache.storage == mode
        got = cache.get(np.array([7, 2, 9, 2]))
        assert got[:, 0, 0, 0].tolist() == [14.0, 4.0, 18.0, 4.0]
        cache.close()
    assert not list(tmp_path.iterdir())  # the disk file is removed


def test_lr_schedules():
    from agebias.finetune.trainer import lr_factor

    cfg = FinetuneConfig(data=["x"], backbone="b", out="o", epochs=4, scheduler="cosine", warmup_epochs=1)
    f = lr_factor(cfg, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(25) == pytest.approx(0.5) and f(40) == pytest.approx(0.0)
    step = lr_factor(FinetuneConfig(data=["x"], backbone="b", out="o", epochs=4, scheduler="step",
                                    step_epochs=[2]), 10)
    assert step(19) == 1.0 and step(20) == pytest.approx(0.1)
    assert lr_factor(FinetuneConfig(data=["x"], backbone="b", out="o"), 10)(123) == 1.0
