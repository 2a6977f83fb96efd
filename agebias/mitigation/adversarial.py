"""SensitiveNets-style age-group adversary (as used in FR-NAS).

Parts:

- an optional residual MLP ``A`` between backbone and head, ``e' = e + W2 PReLU(W1 e)`` with ``W2`` zero at start
  (so training starts from the backbone's own embedding); the margin head and the adversary see ``e'``;
- a small group classifier ``D`` (MLP, ``G`` outputs) trained with cross-entropy on **detached** embeddings,
  ``L_D = disc_weight * CE(D(stopgrad(e')), g)``; it updates only ``D`` (``disc_weight`` acts as ``D``'s own
  learning-rate factor, since ``D`` shares the model's optimiser);
- after ``warmup`` optimiser steps, the model pays the penalty (gradients reach the model, not ``D``)::

      L_adv = mean_{i, k} log(1 + |t_k - P_D(k | e'_i)|),   t_k = 1 / G (uniform target)

  weighted by ``weight``. It is 0 when ``D`` can tell nothing (uniform posterior) and grows as ``D`` becomes sure,
  pushing the embedding toward carrying no age-group information.

Samples without a group (``g < 0``) are left out of both terms.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from agebias.mitigation.base import HookSetup, MethodHooks, StepContext
from agebias.mitigation.registry import Param, register_mitigation


def adversarial_penalty(probs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """``mean(log(1 + |target - probs|))`` over (N, G) group posteriors; target defaults to uniform ``1/G``."""
    if target is None:
        target = torch.full_like(probs, 1.0 / probs.shape[1])
    return torch.log1p((target - probs).abs()).mean()


class ResidualMLP(nn.Module):
    """``e + W2 PReLU(W1 e)``; identity at initialisation (``W2 = 0``)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.PReLU(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class GroupDiscriminator(nn.Module):
    """``Linear(D, H) -> ReLU -> Linear(H, G)`` on ``sqrt(D) * e / |e|`` (L2-normalised, rescaled to unit variance
    per coordinate so that default initialisation and learning rates suit it); returns group logits."""

    def __init__(self, dim: int, n_groups: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_groups))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(F.normalize(emb) * math.sqrt(emb.shape[1]))


class AgeAdversary(nn.Module):
    """Discriminator loss plus (after warm-up) the weighted penalty; see the module docstring."""

    def __init__(self, dim: int, n_groups: int, weight: float = 1.0, warmup: int = 100, hidden: int = 64,
                 mlp: bool = False, disc_weight: float = 1.0):
        super().__init__()
        if n_groups < 2:
            raise ValueError("the adversary needs at least 2 age groups")
        self.n_groups = n_groups
        self.weight = float(weight)
        self.warmup = int(warmup)
        self.disc_weight = float(disc_weight)
        self.mlp = ResidualMLP(dim) if mlp else None
        self.discriminator = GroupDiscriminator(dim, n_groups, hidden)

    def transform(self, emb: torch.Tensor) -> torch.Tensor:
        """The embedding the head sees (``e'``); the identity without ``mlp``."""
        return emb if self.mlp is None else self.mlp(emb)

    def losses(self, emb: torch.Tensor, groups: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """``{"adv_disc": L_D, "adv_penalty": weight * L_adv (0 before warm-up)}`` for embeddings ``e'``."""
        keep = groups >= 0
        emb, groups = emb[keep], groups[keep]
        zero = emb.sum() * 0.0
        if emb.shape[0] == 0:
            return {"adv_disc": zero, "adv_penalty": zero}
        disc = self.disc_weight * F.cross_entropy(self.discriminator(emb.detach()), groups)
        if step < self.warmup or self.weight == 0.0:
            return {"adv_disc": disc, "adv_penalty": zero}
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        probs = functional_call(self.discriminator, frozen, (emb,)).softmax(dim=1)
        return {"adv_disc": disc, "adv_penalty": self.weight * adversarial_penalty(probs)}

    @staticmethod
    def max_penalty(n_groups: int) -> float:
        """The penalty of a one-hot posterior: ``((G-1) log(1 + 1/G) + log(1 + (G-1)/G)) / G``."""
        g = n_groups
        return ((g - 1) * math.log1p(1 / g) + math.log1p((g - 1) / g)) / g


@register_mitigation("adversarial", "SensitiveNets-style age-group adversary: group classifier on detached "
                     "embeddings, penalty mean(log(1+|1/G - P(group)|)) after warm-up", (
                         Param("weight", "float", 1.0, "penalty weight"),
                         Param("warmup", "int", 50, "optimiser steps before the penalty starts (classifier warm-up)",
                               low=0),
                         Param("hidden", "int", 64, "hidden units of the group classifier", low=1),
                         Param("disc_weight", "float", 1.0, "weight of the classifier's own loss (its learning-rate "
                               "factor)", low=0.0),
                         Param("mlp", "bool", False, "insert a residual MLP between backbone and head (not exported "
                               "with backbone.pth)"),
                     ))
class AdversarialHooks(MethodHooks):
    """Hook points: ``modules`` (the adversary), ``transform_embeddings`` (the optional MLP), ``extra_loss``."""

    def setup(self, setup: HookSetup) -> None:
        self._need_groups(setup)
        p = self.params
        self.adversary = AgeAdversary(setup.embedding_dim, setup.num_groups, weight=p["weight"], warmup=p["warmup"],
                                      hidden=p["hidden"], mlp=p["mlp"], disc_weight=p["disc_weight"]).to(setup.device)

    def modules(self) -> nn.Module:
        return self.adversary

    def transform_embeddings(self, embeddings, ctx):
        return self.adversary.transform(embeddings)

    def extra_loss(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return self.adversary.losses(ctx.embeddings, ctx.groups, ctx.step)
