"""The fine-tuning loop's side of the bias-mitigation hooks (``--mitigation NAME[:k=v,...]``).

The hook points (:class:`TrainingHooks`, :class:`HookSetup`, :class:`StepContext`) and the order in which the trainer
calls them are defined in :mod:`agebias.mitigation.base`, so that the methods do not depend on the trainer (the
dependency runs finetune -> mitigation). :func:`create_hooks` builds a registered method from its spec; new methods
are registered with :func:`agebias.mitigation.registry.register_mitigation`.
"""

from __future__ import annotations

import torch

from agebias.mitigation.base import HookSetup, StepContext, TrainingHooks
from agebias.mitigation.registry import create_hooks

__all__ = ["HookSetup", "StepContext", "TrainingHooks", "as_loss_terms", "create_hooks"]


def as_loss_terms(value: torch.Tensor | dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Normalise :meth:`TrainingHooks.extra_loss`'s return value to ``{name: scalar tensor}``."""
    if value is None:
        return {}
    if isinstance(value, torch.Tensor):
        return {"extra": value}
    return dict(value)
