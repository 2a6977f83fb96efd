"""Loading the optional numba kernels of bf16 CPU training (:mod:`agebias.finetune.bf16_sgd_kernel`,
:mod:`agebias.finetune.bf16_adam_kernel`, :mod:`agebias.finetune.bf16_prelu_kernel`): each lives in a module of its
own that imports numba. Without numba they are silently absent; with numba, one that fails to import or build is
reported (a warning) and its torch path runs."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Callable

log = logging.getLogger(__name__)


def load_kernel(module: str, name: str, what: str, otherwise: str) -> Callable | None:
    """``module.name``, or None where ``AGEBIAS_NO_JIT`` is set, numba is not installed, or the kernel cannot be
    imported, built or cached here (then a warning names ``what`` and says ``otherwise``: what runs instead)."""
    if os.environ.get("AGEBIAS_NO_JIT", "") not in ("", "0") or not numba_installed():
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except Exception as err:  # noqa: BLE001 - a kernel numba cannot build or cache here leaves the torch path
        log.warning(f"{what} is not usable here ({type(err).__name__}: {err}); {otherwise}")
        return None


def numba_installed() -> bool:
    """Whether numba can be imported (``pip install 'agebias[fast]'``)."""
    return importlib.util.find_spec("numba") is not None
