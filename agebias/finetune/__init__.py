"""Fine-tuning (``agebias finetune``): frozen layers done right, a cached frozen prefix, margin heads, identity-
disjoint validation, exact resume, DDP, and hooks for bias-mitigation methods.

Library entry point: ``run_finetune(FinetuneConfig(...)) -> FinetuneResult`` (:mod:`agebias.finetune.trainer`);
hook interface: :mod:`agebias.finetune.hooks`. The package is also callable: ``agebias.finetune(config)`` is
:func:`agebias.api.finetune` (see :mod:`agebias.callable_package`).
"""

from __future__ import annotations

from typing import Any

from agebias.callable_package import make_callable

__all__ = ["FinetuneConfig", "FinetuneResult", "run_finetune"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import torch-heavy modules
    if name == "FinetuneConfig":
        from agebias.finetune.config import FinetuneConfig

        return FinetuneConfig
    if name in ("FinetuneResult", "run_finetune"):
        from agebias.finetune import trainer

        return getattr(trainer, name)
    raise AttributeError(name)


make_callable(__name__, "agebias.api:finetune")
