"""Distribution distillation loss (DDL; Huang et al., arXiv 2002.03662; FairFace-challenge solution).

Batches are multi-branch: one sub-batch per age group (:class:`GroupBranchSampler`), each holding pairs of
images of the same identity. Per branch ``g`` with L2-normalised embeddings:

- positive similarities ``S+_g``: cosines of all pairs with the same label;
- negative similarities ``S-_g``: the ``topk`` largest cosines among pairs with different labels (hard negatives
  mined online; ``topk = 0`` keeps all);
- soft histogram with ``K`` nodes spread evenly over [-1, 1], ``t_k = -1 + 2k / (K - 1)``, as in the DDL paper
  (after Ustinova & Lempitsky's histogram loss): each similarity ``x`` adds ``exp(-(x - t_k)^2 / (2 sigma^2))`` to
  node ``k``; the histogram is normalised to sum 1 (``sigma`` defaults to the node spacing ``2 / (K - 1)``). Every
  cosine, negative ones included, lies inside the nodes' range and gets a gradient. (The FairFace-challenge code,
  CdtQin/FairFace ``model.py`` ``cal_local_prob``, used nodes 0, 0.01, ..., 0.99 and sigma 0.1: [0, 1) only.)

With ``t`` the teacher branch (``teacher = K`` fixed, or ``-1``: the branch with the largest
``mean(S+) - mean(S-)`` in this batch) and ``KL(p || q) = sum_k p_k log(p_k / q_k)``::

    L_kl      = mean_{g != t} [ KL(stopgrad(P+_t) || P+_g) + KL(stopgrad(P-_t) || P-_g) ]
    L_order   = - mean_g ( mean(S+_g) - mean(S-_g) )
    L_entropy = mean_g [ H(P+_g) + H(P-_g) ],     H(p) = - sum_k p_k log p_k
    L_ddl     = weight * (L_kl + order_weight * L_order + entropy_weight * L_entropy)

Branches without at least one positive and one negative pair are skipped; with fewer than two usable branches
``L_kl`` is 0.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from agebias.errors import DataError, SettingsError
from agebias.mitigation.base import HookSetup, MethodHooks, StepContext
from agebias.mitigation.registry import Param, register_mitigation

log = logging.getLogger(__name__)

EPS = 1e-8


def histogram_nodes(bins: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The ``bins`` nodes ``-1 + 2k / (bins - 1)``, k = 0 .. bins - 1, evenly over [-1, 1] (both ends included)."""
    return torch.linspace(-1.0, 1.0, bins, dtype=dtype, device=device)


def soft_histogram(x: torch.Tensor, bins: int = 20, sigma: float | None = None) -> torch.Tensor:
    """Gaussian-bump histogram over ``bins`` nodes evenly over [-1, 1]; sums to 1 (``sigma``: node spacing)."""
    sigma = 2.0 / (bins - 1) if sigma is None else sigma
    centres = histogram_nodes(bins, x.dtype, x.device)
    bumps = torch.exp(-((x[:, None] - centres[None, :]) ** 2) / (2 * sigma**2))
    hist = bumps.sum(0)
    return hist / hist.sum().clamp_min(EPS)


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``sum p log(p / q)`` with ``EPS`` guarding empty bins."""
    return (p * (torch.log(p + EPS) - torch.log(q + EPS))).sum()


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p + EPS)).sum()


def pair_similarities(emb: torch.Tensor, labels: torch.Tensor, topk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S+, S-)``: cosines of same-label pairs ``i < j`` and the ``topk`` hardest different-label pairs."""
    e = F.normalize(emb)
    sim = e @ e.T
    iu = torch.triu_indices(len(e), len(e), offset=1, device=e.device)
    s = sim[iu[0], iu[1]]
    same = labels[iu[0]] == labels[iu[1]]
    pos, neg = s[same], s[~same]
    if topk > 0 and neg.numel() > topk:
        neg = neg.topk(topk).values
    return pos, neg


def ddl_loss(emb: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, *, bins: int = 20,
             sigma: float | None = None, topk: int = 0, teacher: int = -1, weight: float = 1.0,
             order_weight: float = 1.0, entropy_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """The DDL terms of the module docstring; returns ``{"ddl", "ddl_kl", "ddl_order", "ddl_entropy"}`` and
    ``"teacher"`` (the teacher group index as a 0-d tensor, -1 if none)."""
    branches = []
    for g in torch.unique(groups[groups >= 0]).tolist():
        idx = groups == g
        pos, neg = pair_similarities(emb[idx], labels[idx], topk)
        if pos.numel() and neg.numel():
            branches.append((int(g), pos, neg))
    zero = emb.sum() * 0.0
    if not branches:
        return {"ddl": zero, "ddl_kl": zero, "ddl_order": zero, "ddl_entropy": zero, "teacher": torch.tensor(-1)}
    gaps = [float((pos.mean() - neg.mean()).detach()) for _, pos, neg in branches]
    ids = [g for g, _, _ in branches]
    t = ids.index(teacher) if teacher in ids else (int(max(range(len(gaps)), key=gaps.__getitem__))
                                                   if teacher < 0 else None)
    hists = [(soft_histogram(pos, bins, sigma), soft_histogram(neg, bins, sigma)) for _, pos, neg in branches]
    kl_terms = []
    if t is not None:
        hp_t, hn_t = hists[t][0].detach(), hists[t][1].detach()
        kl_terms = [kl_divergence(hp_t, hp) + kl_divergence(hn_t, hn) for i, (hp, hn) in enumerate(hists) if i != t]
    kl = torch.stack(kl_terms).mean() if kl_terms else zero
    order = -torch.stack([pos.mean() - neg.mean() for _, pos, neg in branches]).mean()
    ent = torch.stack([entropy(hp) + entropy(hn) for hp, hn in hists]).mean()
    total = weight * (kl + order_weight * order + (entropy_weight * ent if entropy_weight else 0.0))
    return {"ddl": total, "ddl_kl": kl.detach(), "ddl_order": order.detach(), "ddl_entropy": ent.detach(),
            "teacher": torch.tensor(ids[t] if t is not None else -1)}


class GroupBranchSampler:
    """Batch sampler for multi-branch batches: each batch is the concatenation of one sub-batch per age group.

    A sub-batch holds ``batch_size // G`` images: ``per_identity`` images each of randomly chosen identities that
    have at least ``per_identity`` images in that group (drawn without replacement while enough remain). Groups
    with no such identity are left out (listed in ``skipped_groups``). ``len(self)`` batches per epoch,
    ``max(1, N // batch_size)``; call ``set_epoch`` for a new, reproducible shuffle each epoch.
    """

    def __init__(self, labels: Sequence[int], groups: Sequence[int], batch_size: int, per_identity: int = 2,
                 seed: int = 0, n_batches: int | None = None):
        self.labels = [int(v) for v in labels]
        self.groups = [int(v) for v in groups]
        self.per_identity = max(1, int(per_identity))
        self.seed = int(seed)
        self.epoch = 0
        by_group: dict[int, dict[int, list[int]]] = {}
        for i, (y, g) in enumerate(zip(self.labels, self.groups, strict=True)):
            if g >= 0:
                by_group.setdefault(g, {}).setdefault(y, []).append(i)
        self.pools = {g: {y: idx for y, idx in ids.items() if len(idx) >= self.per_identity}
                      for g, ids in sorted(by_group.items())}
        self.skipped_groups = [g for g, ids in self.pools.items() if not ids]
        self.pools = {g: ids for g, ids in self.pools.items() if ids}
        if not self.pools:
            raise ValueError(f"no age group has an identity with >= {self.per_identity} images")
        per_branch = max(self.per_identity, batch_size // len(self.pools))
        self.ids_per_branch = max(1, per_branch // self.per_identity)
        self.batch_size = self.ids_per_branch * self.per_identity * len(self.pools)
        self.n_batches = n_batches or max(1, len(self.labels) // max(1, batch_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.epoch_batches(np.random.default_rng([self.seed, self.epoch])))

    def epoch_batches(self, rng: np.random.Generator) -> list[list[int]]:
        """One epoch of batches drawn with ``rng`` (identities cycle in a fresh random order per group)."""
        queues: dict[int, list[int]] = {g: [] for g in self.pools}
        batches = []
        for _ in range(self.n_batches):
            batch: list[int] = []
            for g, ids in self.pools.items():
                keys = list(ids)
                for _k in range(self.ids_per_branch):
                    if not queues[g]:
                        queues[g] = [keys[i] for i in rng.permutation(len(keys))]
                    imgs = ids[queues[g].pop()]
                    batch.extend(imgs[i] for i in rng.permutation(len(imgs))[: self.per_identity])
            batches.append(batch)
        return batches


@register_mitigation("ddl", "distribution distillation: per-age-group batches, KL between soft histograms of pos/neg "
                     "similarities (teacher group detached), order and entropy terms", (
                         Param("weight", "float", 1.0, "weight of the DDL loss"),
                         Param("bins", "int", 20, "histogram nodes evenly over [-1, 1]", low=2),
                         Param("sigma", "float", 0.0, "Gaussian bump width; 0 = the node spacing 2/(bins-1)",
                               low=0.0),
                         Param("topk", "int", 32, "hard negatives per branch (0 = all negative pairs)", low=0),
                         Param("teacher", "int", -1, "teacher age group; -1 = the best separated group in each batch"),
                         Param("order", "float", 1.0, "weight of the order loss on mean(pos) - mean(neg)"),
                         Param("entropy", "float", 0.0, "weight of the entropy term"),
                         Param("per_identity", "int", 2, "images per identity in each group sub-batch (>= 2: "
                               "positive pairs are needed)", low=2),
                     ))
class DDLHooks(MethodHooks):
    """Hook points: ``make_batches`` (one sub-batch per age group), ``extra_loss``."""

    def setup(self, setup: HookSetup) -> None:
        self._check_group_index(setup, "teacher")
        self._need_groups(setup)
        per_identity = self.params["per_identity"]
        try:
            # one list entry per process batch: under DDP process r takes entries r, r + N, ...
            self.sampler = GroupBranchSampler(setup.labels, setup.groups, setup.batch_size, per_identity=per_identity,
                                              seed=setup.seed,
                                              n_batches=max(1, setup.steps_per_epoch * setup.world_size))
        except ValueError as err:
            raise DataError(f"mitigation 'ddl': {err}") from None
        if len(self.sampler.pools) < 2:
            raise DataError(f"mitigation 'ddl' needs identities with >= {per_identity} images in at least 2 age "
                            "groups")
        teacher = int(self.params["teacher"])
        if teacher >= 0 and teacher not in self.sampler.pools:
            raise SettingsError(f"ddl: teacher group {teacher} ({setup.group_names[teacher]}) has no identity with >= "
                                f"{per_identity} images, so it has no branch; choose another teacher or -1",
                                field="mitigation")
        if self.sampler.skipped_groups:
            names = ", ".join(setup.group_names[g] for g in self.sampler.skipped_groups)
            log.info(f"ddl: age groups without an identity of >= {per_identity} images are left out of the "
                     f"branches: {names}")

    def make_batches(self, epoch: int, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        return [np.asarray(b, dtype=np.int64) for b in self.sampler.epoch_batches(rng)]

    def extra_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        p = self.params
        out = ddl_loss(ctx.embeddings.float(), ctx.labels, ctx.groups, bins=p["bins"], sigma=p["sigma"] or None,
                       topk=p["topk"], teacher=p["teacher"], weight=p["weight"], order_weight=p["order"],
                       entropy_weight=p["entropy"])
        return {"ddl": out["ddl"]}
