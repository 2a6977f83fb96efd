"""Training checkpoints: everything needed to continue a run exactly, written atomically after every epoch.

``RUN_DIR/checkpoints/last.pt`` holds a dict of tensors and plain Python values only (read back with
``torch.load(weights_only=True)``): ``format``, ``config_hash`` and ``config`` (the training settings, so that
a run extended to more epochs still recognises its checkpoint), ``epoch`` (epochs completed), ``step``, the backbone,
head and hook-module state dicts, optimizer, LR scheduler and grad-scaler states, the RNG states of every process
(torch, CUDA, numpy and Python ``random``), the data-order seed, the metric history and the best epoch so far.
The data order of epoch e is a function of (seed, e) (see :func:`agebias.finetune.data.epoch_order`), so the
completed-epoch count restores it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agebias.atomic import atomic_path
from agebias.errors import ModelError

FORMAT = "agebias-finetune-checkpoint/1"


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors / plain values (safe for ``weights_only`` loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py[0], "state": torch.tensor(py[1], dtype=torch.int64), "gauss": py[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (any unreadable or foreign file is a :class:`ModelError`); whether it belongs to
    this run is :func:`agebias.finetune.run_dir.check_checkpoint`'s question."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ModelError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelError(f"{path} is not an agebias fine-tuning checkpoint")
    return state
