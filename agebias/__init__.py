"""agebias: measure and reduce age bias in face recognition.

The Python API (see :mod:`agebias.api`; names are imported on first use, so ``import agebias`` is light)::

    agebias.embed(images, model="sface", ...)             -> numpy array (N, D)
    agebias.evaluate(embeddings, subjects, ages, ...)     -> EvaluationResult (.overall, .by_group, .plot, .save)
    agebias.evaluate_dataset(path, models=[...], ...)     -> EvaluationResult
    agebias.load_backbone(path)                           -> torch module
    agebias.finetune(FinetuneConfig(...))                 -> FinetuneResult (.history DataFrame)
    agebias.generate(method=..., out=..., ...)            -> GenerateResult
    agebias.estimate_ages(images)                         -> apparent ages (bundled age network)

Settings classes: ``EvalSettings``, ``EmbedSettings``, ``FinetuneConfig``, ``GenerateSettings``; results:
``EvaluationResult``. Errors a user can cause derive from ``agebias.errors.UserError``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# submodules imported on first access; agebias.evaluate and agebias.finetune are also callable
# (agebias.callable_package)
_PACKAGES = ("evaluate", "finetune", "console", "errors")
_EXPORTS = {
    "embed": "agebias.api", "evaluate_dataset": "agebias.api", "load_backbone": "agebias.api",
    "generate": "agebias.api", "estimate_ages": "agebias.apparent_age",
    "EvaluationResult": "agebias.evaluate.result", "EvalSettings": "agebias.evaluate.settings",
    "EmbedSettings": "agebias.evaluate.settings", "FinetuneConfig": "agebias.finetune.config",
    "GenerateSettings": "generators.settings", "UserError": "agebias.errors",
}
__all__ = sorted([*_EXPORTS, *_PACKAGES])


def __getattr__(name: str) -> Any:
    if name in _PACKAGES:
        return importlib.import_module(f"agebias.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'agebias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
