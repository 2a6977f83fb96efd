"""The mitigation hooks against the trainer's hook interface, on a tiny iresnet head and hand-made batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agebias.errors import UserError
from agebias.finetune.hooks import HookSetup, StepContext, create_hooks
from agebias.models.heads import create_head
from agebias.models.iresnet import IResNet


def _setup(head_name: str = "cosface", batch_size: int = 8) -> tuple[HookSetup, IResNet]:
    torch.manual_seed(0)
    model = IResNet((1, 1, 1, 1), widths=(4, 4, 8, 8), num_features=16)
    head = create_head(head_name, 16, 6, scale=8.0, margin=0.3)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0, 1])
    groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 1, 2])
    setup = HookSetup(labels=labels, groups=groups, num_classes=6, group_names=["0-10", "10-40", "40+"],
                      embedding_dim=16, feature_channels=8, head=head, device=torch.device("cpu"), epochs=1,
                      steps_per_epoch=2, batch_size=batch_size, seed=0)
    return setup, model


def _ctx(setup: HookSetup, model: IResNet, idx: list[int], step: int = 0) -> StepContext:
    x = torch.randn(len(idx), 3, 112, 112, generator=torch.Generator().manual_seed(1))
    fmap = model.layer4(model.layer3(model.layer2(model.layer1(model.forward_stem(x)))))
    labels = torch.as_tensor(setup.labels[idx])
    return StepContext(epoch=0, step=step, labels=labels, original_labels=labels,
                       groups=torch.as_tensor(setup.groups[idx]), feature_maps=fmap,
                       embeddings=model.forward_head(fmap), head=setup.head, forward_head=model.forward_head,
                       generator=torch.Generator().manual_seed(0))


def test_group_margin_offsets_follow_groups():
    setup, model = _setup()
    hooks = create_hooks("group-margin:margins=0.5/0.3/0.4")
    hooks.setup(setup)
    ctx = _ctx(setup, model, [0, 4, 8, 9])
    assert hooks.margin_offsets(ctx).tolist() == pytest.approx([0.2, 0.0, 0.1, 0.1])
    ramp = create_hooks("group-margin:step=0.1")
    ramp.setup(setup)
    assert ramp.margins == pytest.approx([0.4, 0.3, 0.4])
    with pytest.raises(UserError):
        bad = create_hooks("group-margin:margins=0.1/0.2")
        bad.setup(setup)


def test_group_index_parameters_out_of_range_are_user_errors():
    # label-flip:group=K, group-margin:base=K and ddl:teacher=K with K beyond the age groups used to be
    # silently ignored (no flip at all; a margin ramp around a missing group; no KL term ever)
    setup, _ = _setup()
    for spec in ("label-flip:group=3", "group-margin:base=5", "ddl:teacher=3", "label-flip:group=-2"):
        with pytest.raises(UserError, match="not an age group index"):
            create_hooks(spec).setup(setup)
    for spec in ("label-flip:group=2", "group-margin:base=0", "ddl:teacher=1"):
        create_hooks(spec).setup(setup)  # valid indices still work


def test_mixfair_refuses_non_iresnet_backbones_at_setup():
    # used to fail only at the first training step, after the data had been read
    setup, _ = _setup()
    setup.feature_channels = 0  # what the trainer passes for a non-iresnet (e.g. timm) backbone
    with pytest.raises(UserError, match="needs an iresnet"):
        create_hooks("mixfair").setup(setup)


def test_ddl_teacher_group_without_branch_is_refused():
    setup, _ = _setup()
    setup.groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 0, 2, 1, 1, 2])  # group 2: no identity with 2 images
    create_hooks("ddl").setup(setup)  # automatic teacher: fine, group 2 just has no branch
    with pytest.raises(UserError, match="teacher group 2 .* has no identity"):
        create_hooks("ddl:teacher=2").setup(setup)


def test_label_flip_hook_stays_inside_groups():
    setup, _ = _setup()
    hooks = create_hooks("label-flip:p=1.0,group=2")
    hooks.setup(setup)
    labels, groups = torch.tensor([0, 4, 5, 1]), torch.tensor([0, 2, 2, 2])
    new = hooks.transform_labels(labels, groups, torch.Generator().manual_seed(0))
    assert new[0] == 0  # group 0 untouched
    assert all(int(new[i]) in {1, 4, 5} and new[i] != labels[i] for i in (1, 2, 3))  # group 2's identities
    assert hooks.state_dict()["flipped"] == 3


def test_mixfair_offsets_match_formula_and_keep_bn_stats():
    setup, model = _setup()
    model.train()
    hooks = create_hooks("mixfair:detach=true")
    hooks.setup(setup)
    ctx = _ctx(setup, model, [0, 2, 4, 6])
    before = model.features.running_mean.clone()
    off = hooks.margin_offsets(ctx)
    assert torch.equal(model.features.running_mean, before)  # extra forward leaves BN statistics alone
    # recompute with the same partner permutation (train-mode BN uses batch statistics: same output again)
    from agebias.mitigation.mixfair import cifp_margin, mixfair_shift, random_partner

    perm = random_partner(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        f_mix = model.forward_head(0.5 * ctx.feature_maps + 0.5 * ctx.feature_maps[perm])
        expected = mixfair_shift(ctx.embeddings, ctx.embeddings[perm], f_mix)
        expected += cifp_margin(setup.head.cosine(ctx.embeddings), ctx.labels, 0.3)  # the head's margin is 0.3
    assert torch.allclose(off, expected, atol=1e-6)
    assert not off.requires_grad and float(off.abs().sum()) > 0
    without = create_hooks("mixfair:detach=true,cifp=false")
    without.setup(setup)
    with torch.no_grad():  # a fresh context: the same batch, partner permutation and embeddings
        assert torch.allclose(without.margin_offsets(_ctx(setup, model, [0, 2, 4, 6])), expected - cifp_margin(
            setup.head.cosine(ctx.embeddings), ctx.labels, 0.3), atol=1e-6)
    # the main forward's graph survives the extra forward (BN buffers saved for backward are not touched)
    setup.head(ctx.embeddings, ctx.labels, off).sum().backward()
    assert model.fc.weight.grad is not None
    # by default (as MixFairFace's released training step) the shift carries gradient too
    live = create_hooks("mixfair")
    live.setup(setup)
    ctx2 = _ctx(setup, model, [0, 2, 4, 6])
    off2 = live.margin_offsets(ctx2)
    assert off2.requires_grad
    setup.head(ctx2.embeddings, ctx2.labels, off2).sum().backward()


def test_adversarial_hook_losses_and_modules():
    setup, model = _setup()
    hooks = create_hooks("adversarial:warmup=1,weight=3,mlp=true")
    hooks.setup(setup)
    assert sum(p.numel() for p in hooks.modules().parameters()) > 0
    ctx = _ctx(setup, model, [0, 4, 8, 9], step=0)
    ctx.embeddings = hooks.transform_embeddings(ctx.embeddings, ctx)
    warm = hooks.extra_loss(ctx)
    assert float(warm["adv_penalty"].detach()) == 0.0 and float(warm["adv_disc"].detach()) > 0
    ctx.step = 1
    assert float(hooks.extra_loss(ctx)["adv_penalty"].detach()) > 0


def test_ddl_hook_batches_and_loss():
    setup, model = _setup(batch_size=6)
    hooks = create_hooks("ddl:bins=8,topk=4")
    hooks.setup(setup)
    batches = hooks.make_batches(0, np.random.default_rng(0), 6)
    assert len(batches) == 2  # steps_per_epoch
    for b in batches:
        assert setup.groups[b].tolist() == [0, 0, 1, 1, 2, 2]
        assert all(setup.labels[b[k]] == setup.labels[b[k + 1]] for k in range(0, 6, 2))
    ctx = _ctx(setup, model, batches[0].tolist())
    loss = hooks.extra_loss(ctx)["ddl"]
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises(UserError):
        one_group = create_hooks("ddl")
        s2, _ = _setup()
        s2.groups = np.zeros_like(s2.groups)
        one_group.setup(s2)


def test_label_flip_default_flips_the_adult_group_in_every_batch():
    setup, _ = _setup()  # groups 0-10, 10-40, 40+: the adult group (holding age 30) is 10-40
    hooks = create_hooks("label-flip:p=0.5")
    hooks.setup(setup)
    assert hooks.group == 1 and hooks.describe()["flipped_group"] == 1
    labels = torch.tensor([0, 1, 2, 3, 2, 3, 4, 5, 4])
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2, 2])
    for seed in range(6):  # every batch: int(0.5 * 4) = 2 of group 1's four samples, nothing else
        new = hooks.transform_labels(labels, groups, torch.Generator().manual_seed(seed))
        changed = (new != labels).nonzero().flatten().tolist()
        assert len(changed) == 2 and all(2 <= i <= 5 for i in changed)
        assert all(int(new[i]) in {0, 2, 3} for i in changed)  # identities with an image in group 1 (C_1)
    assert hooks.state_dict()["flipped"] == 12


def test_group_margin_default_base_is_the_adult_group():
    setup, model = _setup()
    setup.group_names = ["0-12", "13-19", "20-39", "40-69"]
    setup.groups = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 0, 1, 2, 3])
    hooks = create_hooks("group-margin:step=0.1")
    hooks.setup(setup)
    assert hooks.base_group == 2  # 20-39, not the middle index 1 (13-19)
    assert hooks.margins == pytest.approx([0.5, 0.4, 0.3, 0.4])  # the head's 0.3 for adults, +0.1 per group away
