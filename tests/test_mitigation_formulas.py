"""Formula checks of the mitigation methods on tiny tensors with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from agebias.mitigation.adversarial import AgeAdversary, adversarial_penalty
from agebias.mitigation.ddl import (GroupBranchSampler, ddl_loss, histogram_nodes, kl_divergence, pair_similarities,
                                    soft_histogram)
from agebias.mitigation.group_margin import group_margin_logits, resolve_margins
from agebias.mitigation.base import adult_group
from agebias.mitigation.label_flip import flip_count, flip_labels, group_identity_table
from agebias.mitigation.mixfair import cifp_margin, mixfair_logits, mixfair_shift, random_partner


# ---- label flip -------------------------------------------------------------------------------------------------

def test_group_identity_table_lists_identities_per_group():
    table = group_identity_table([0, 0, 1, 2, 2], [0, 1, 1, 0, -1], 2)
    assert table[0].tolist() == [0, 2] and table[1].tolist() == [0, 1]


def test_label_flip_fixed_group_all_flipped_swaps_two_identities():
    labels = torch.tensor([0, 1, 3, 4])
    groups = torch.tensor([0, 0, 1, 1])
    cands = [torch.tensor([0, 1, 2]), torch.tensor([3, 4])]
    new = flip_labels(labels, groups, cands, p=1.0, group=1, generator=torch.Generator().manual_seed(0))
    assert new.tolist() == [0, 1, 4, 3]  # only other identity of group 1 for each; group 0 untouched
    assert labels.tolist() == [0, 1, 3, 4]  # input not modified


def test_label_flip_count_is_truncated_per_batch_as_in_frnas():
    # FR-NAS: n = int(0.3 * n_group). Batches with 3, 5, 7 and 10 samples of the flipped group flip 0, 1, 2 and 3
    # (rounding would flip 1, 2, 2 and 3); the other group's samples never change.
    cands = [torch.arange(0, 50), torch.arange(50, 100)]
    for n_g, expected in ((3, 0), (5, 1), (7, 2), (10, 3)):
        assert flip_count(0.3, n_g) == expected
        labels = torch.cat([torch.arange(n_g), torch.arange(50, 54)])
        groups = torch.cat([torch.zeros(n_g, dtype=torch.long), torch.ones(4, dtype=torch.long)])
        for seed in range(5):
            new = flip_labels(labels, groups, cands, p=0.3, group=0, generator=torch.Generator().manual_seed(seed))
            changed = (new != labels).nonzero().flatten().tolist()
            assert len(changed) == expected
            assert all(i < n_g and 0 <= int(new[i]) < 50 for i in changed)  # same group, another identity


def test_label_flip_absent_group_and_zero_p():
    labels, groups = torch.tensor([0, 1]), torch.tensor([0, 0])
    cands = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    assert flip_labels(labels, groups, cands, p=1.0, group=1).tolist() == [0, 1]  # group 1 not in the batch
    assert flip_labels(labels, groups, cands, p=0.0, group=0).tolist() == [0, 1]
    with pytest.raises(ValueError):
        flip_labels(labels, groups, cands, p=0.3, group=-1)


def test_adult_group_is_the_one_holding_age_30():
    assert adult_group(["0-12", "13-19", "20-39", "40-69"]) == 2
    assert adult_group(["0-10", "10-40", "40+"]) == 1
    assert adult_group(["0-12", "13-19"]) == 1  # none holds 30: the nearest
    assert adult_group(["young", "mid", "old"]) == 1  # not age ranges: the middle group


# ---- group margin -----------------------------------------------------------------------------------------------

def test_group_margin_logits_hand_values():
    cos = torch.tensor([[0.5, 0.2], [0.1, 0.8], [0.3, 0.3]])
    logits = group_margin_logits(cos, torch.tensor([0, 1, 0]), torch.tensor([0, 1, -1]), torch.tensor([0.1, 0.3]),
                                 scale=2.0, default=0.2)
    expected = torch.tensor([[0.8, 0.4], [0.2, 1.0], [0.2, 0.6]])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_resolve_margins_ramp_and_explicit():
    assert resolve_margins([], 3, 0.35, step=0.05, base=1) == pytest.approx([0.40, 0.35, 0.40])
    assert resolve_margins([], 4, 0.3, step=0.1, base=0) == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert resolve_margins([0.2], 3, 0.35) == [0.2, 0.2, 0.2]
    with pytest.raises(ValueError):
        resolve_margins([0.1, 0.2], 3, 0.35)


# ---- adversarial ------------------------------------------------------------------------------------------------

def test_adversarial_penalty_hand_values():
    assert float(adversarial_penalty(torch.tensor([[0.5, 0.5]]))) == pytest.approx(0.0)
    assert float(adversarial_penalty(torch.tensor([[1.0, 0.0]]))) == pytest.approx(math.log(1.5))
    # G = 4, one-hot: (3 * log(1 + 1/4) + log(1 + 3/4)) / 4
    val = float(adversarial_penalty(torch.tensor([[0.0, 1.0, 0.0, 0.0]])))
    assert val == pytest.approx((3 * math.log(1.25) + math.log(1.75)) / 4)
    assert AgeAdversary.max_penalty(4) == pytest.approx(val)


def test_adversary_gradients_go_where_they_should():
    torch.manual_seed(0)
    adv = AgeAdversary(dim=4, n_groups=2, weight=2.0, warmup=3, hidden=8)
    emb = torch.randn(6, 4, requires_grad=True)
    groups = torch.tensor([0, 1, 0, 1, -1, 0])
    before = adv.losses(emb, groups, step=2)
    assert float(before["adv_penalty"].detach()) == 0.0  # warm-up
    before["adv_disc"].backward()
    assert emb.grad is None  # classifier trained on detached embeddings
    assert all(p.grad is not None for p in adv.discriminator.parameters())
    adv.zero_grad()
    after = adv.losses(emb, groups, step=3)
    probs = adv.discriminator(emb[groups >= 0]).softmax(1)
    expected = 2.0 * float(adversarial_penalty(probs).detach())
    assert float(after["adv_penalty"].detach()) == pytest.approx(expected, rel=1e-6)
    after["adv_penalty"].backward()
    assert emb.grad is not None and float(emb.grad.abs().sum()) > 0
    assert emb.grad[4].abs().sum() == 0  # ungrouped sample left out
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in adv.discriminator.parameters())


# ---- mixfair ----------------------------------------------------------------------------------------------------

def test_mixfair_shift_and_logits_hand_values():
    f_a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    f_b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    f_mix = torch.tensor([[1.0, 1.0], [0.8, 0.6]])
    shift = mixfair_shift(f_a, f_b, f_mix)
    assert shift.tolist() == pytest.approx([0.0, 0.36 - 0.64])
    logits = mixfair_logits(torch.tensor([[0.5, 0.1], [0.5, 0.1]]), torch.tensor([0, 1]), shift, margin=0.35,
                            scale=10.0)
    assert logits.tolist()[0] == pytest.approx([10 * (0.5 - 0.35), 1.0])
    assert logits.tolist()[1] == pytest.approx([5.0, 10 * (0.1 - 0.35 + 0.28)], abs=1e-5)


def test_cifp_margin_hand_values():
    # B = 2, C = 3: negatives 0.5, 0.1 | 0.2, 0.6; the ceil(4 / 2) = 2 hardest of the batch are 0.6 and 0.5.
    # Row 0 keeps 0.5 (0.9 - 0.35 = 0.55 > 0.5): 0.5^2; row 1 drops 0.6 (0.8 - 0.35 = 0.45 < 0.6): 0.
    cos = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.6]])
    assert cifp_margin(cos, torch.tensor([0, 1]), 0.35).tolist() == pytest.approx([0.25, 0.0])


def test_random_partner_has_no_fixed_points():
    for n in (2, 3, 7):
        perm = random_partner(n, torch.Generator().manual_seed(n))
        assert sorted(perm.tolist()) == list(range(n))
        assert all(perm[i] != i for i in range(n))


# ---- distribution distillation -----------------------------------------------------------------------------------

def test_soft_histogram_hand_values():
    # 3 nodes over [-1, 1]: -1, 0, 1; sigma defaults to the node spacing 1.0
    h = soft_histogram(torch.tensor([0.5]), bins=3)
    raw = [math.exp(-(1.5 ** 2) / 2), math.exp(-(0.5 ** 2) / 2), math.exp(-(0.5 ** 2) / 2)]
    assert h.tolist() == pytest.approx([r / sum(raw) for r in raw])
    assert histogram_nodes(5).tolist() == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])
    x = torch.tensor([-0.6, 0.5], requires_grad=True)  # a negative cosine sits between nodes, inside the range
    h = soft_histogram(x, bins=5)
    assert float(h.sum().detach()) == pytest.approx(1.0) and float(h[1].detach()) > float(h[4].detach())
    h[1].backward()
    assert float(x.grad[0]) != 0.0  # negative cosines get a gradient


def test_kl_hand_value():
    kl = kl_divergence(torch.tensor([0.5, 0.5]), torch.tensor([0.25, 0.75]))
    assert float(kl) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-5)


def test_pair_similarities_positives_and_hard_negatives():
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    pos, neg = pair_similarities(emb, torch.tensor([0, 0, 1, 2]), topk=2)
    assert pos.tolist() == pytest.approx([1.0])
    assert sorted(neg.tolist()) == pytest.approx([0.6, 0.8])
    _, neg_all = pair_similarities(emb, torch.tensor([0, 0, 1, 2]), topk=0)
    assert sorted(neg_all.tolist()) == pytest.approx([0.0, 0.0, 0.6, 0.6, 0.8])


def _hist(values, bins, sigma):
    centres = [-1 + 2 * k / (bins - 1) for k in range(bins)]
    raw = [sum(math.exp(-((x - c) ** 2) / (2 * sigma ** 2)) for x in values) for c in centres]
    return [r / sum(raw) for r in raw]


def test_ddl_loss_hand_values_and_teacher_detached():
    # group 0: pos [1.0], neg [0, 0] -> gap 1 (teacher); group 1: pos [0.6], neg [0.0, 0.8] -> gap 0.2
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 5, 5, 6])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    out = ddl_loss(emb, labels, groups, bins=2, sigma=0.25, topk=0, order_weight=1.0, entropy_weight=0.5)
    assert int(out["teacher"]) == 0
    assert float(out["ddl_order"]) == pytest.approx(-(1.0 + 0.2) / 2)
    kl = lambda p, q: sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q, strict=True))  # noqa: E731
    ent = lambda p: -sum(a * math.log(a) for a in p)  # noqa: E731
    hp_t, hn_t = _hist([1.0], 2, 0.25), _hist([0.0, 0.0], 2, 0.25)
    hp_s, hn_s = _hist([0.6], 2, 0.25), _hist([0.0, 0.8], 2, 0.25)
    exp_kl = kl(hp_t, hp_s) + kl(hn_t, hn_s)
    exp_ent = (ent(hp_t) + ent(hn_t) + ent(hp_s) + ent(hn_s)) / 2
    assert float(out["ddl_kl"]) == pytest.approx(exp_kl, rel=1e-4)
    assert float(out["ddl_entropy"]) == pytest.approx(exp_ent, rel=1e-4)
    assert float(out["ddl"].detach()) == pytest.approx(exp_kl - 0.6 + 0.5 * exp_ent, rel=1e-4)
    # KL alone: the teacher branch gets no gradient
    only_kl = ddl_loss(emb, labels, groups, bins=2, sigma=0.25, order_weight=0.0)
    only_kl["ddl"].backward()
    assert float(emb.grad[:3].abs().sum()) == 0.0
    assert float(emb.grad[3:].abs().sum()) > 0.0


def test_group_branch_sampler_builds_one_sub_batch_per_group():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4]
    groups = [0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 2]  # group 2 has no identity with 2 images
    sampler = GroupBranchSampler(labels, groups, batch_size=8, per_identity=2, seed=1)
    assert sampler.skipped_groups == [2]
    batches = list(sampler)
    assert len(batches) == len(sampler) == 1
    b = batches[0]
    assert len(b) == 8 and sampler.batch_size == 8
    assert [groups[i] for i in b] == [0, 0, 0, 0, 1, 1, 1, 1]
    for k in range(0, 8, 2):  # consecutive pairs share identity and group
        assert labels[b[k]] == labels[b[k + 1]] and b[k] != b[k + 1]
    assert list(GroupBranchSampler(labels, groups, 8, seed=1)) == batches


def test_minimising_ddl_pulls_the_student_histograms_to_the_teacher():
    torch.manual_seed(0)
    labels = torch.arange(8).repeat_interleave(2).repeat(2)
    groups = torch.arange(2).repeat_interleave(16)
    emb = torch.randn(32, 8)
    emb[:16] = torch.randn(8, 8).repeat_interleave(2, 0) + 0.1 * torch.randn(16, 8)  # teacher: tight pairs
    teacher_before = emb[:16].clone()
    emb.requires_grad_(True)
    opt = torch.optim.Adam([emb], lr=0.02)
    first = None
    for _ in range(150):
        out = ddl_loss(emb, labels, groups, bins=10, topk=0, teacher=0, order_weight=0.0)
        first = float(out["ddl_kl"]) if first is None else first
        opt.zero_grad()
        out["ddl"].backward()
        opt.step()
    assert first > 1.0 and float(out["ddl_kl"]) < 0.1 * first  # 4.88 -> 0.27 with 10 nodes over [-1, 1]
    assert torch.equal(emb[:16].detach(), teacher_before)  # the teacher branch never moved
