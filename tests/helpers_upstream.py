"""Helpers for the ``upstream`` tests, which build the real EG3D-Age and CUSP networks from checkouts of their
repositories (named by ``AGEBIAS_EG3D_AGE_REPO`` / ``AGEBIAS_CUSP_REPO``) with random weights, and pickle them as
the upstream training loops write their snapshots.

Import from tests as ``from helpers_upstream import ...`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import pickle
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from generators.checkout import purge_modules


def checkout_or_skip(env: str, code_subdir: str, what: str) -> Path:
    """The checkout named by the environment variable ``env`` (its code folder must hold ``legacy.py``); the test
    is skipped, with the reason, when the variable is unset or wrong."""
    value = os.environ.get(env)
    if not value:
        pytest.skip(f"{env} is not set: point it to a checkout of {what} to run this upstream test "
                    f"(see third_party/README.md)")
    root = Path(value).expanduser()
    if not (root / code_subdir / "legacy.py").is_file():
        pytest.skip(f"{env}={value} is not a checkout of {what} (no {code_subdir or '.'}/legacy.py)")
    return root


def skip_without_modules(*names: str, why: str) -> None:
    """Skip (with the reason) when a module the checkout needs cannot be imported here."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        pytest.skip(f"{why} needs {', '.join(missing)}: pip install {' '.join(missing)}")


@contextmanager
def checkout_on_path(code_dir: Path) -> Iterator[None]:
    """Make the checkout's top-level modules (``dnnlib``, ``legacy``, ``training`` ...) importable, and drop them
    afterwards (both checkouts use the same module names)."""
    purge_modules()
    sys.path.insert(0, str(code_dir))
    try:
        yield
    finally:
        sys.path.remove(str(code_dir))
        purge_modules()


@contextmanager
def restored_imports() -> Iterator[None]:
    """Undo what loading a checkout through an adapter leaves behind: its folder on ``sys.path`` and its modules."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved
        purge_modules()


def training_snapshot(G: Any, D: Any, training_set_kwargs: dict | None = None) -> dict[str, Any]:
    """What the upstream training loops pickle as ``network-snapshot-*.pkl``: G, D, ``G_ema`` (a deep copy of G in
    eval mode without gradients, as the loops make it), ``augment_pipe`` and ``training_set_kwargs``."""
    return {"training_set_kwargs": dict(training_set_kwargs or {}), "G": G, "D": D,
            "G_ema": copy.deepcopy(G).eval().requires_grad_(False), "augment_pipe": None}


def write_pickle(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return path


def png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def file_sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
