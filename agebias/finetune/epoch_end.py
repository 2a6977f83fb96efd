"""The steps after each training epoch, run in order: validate, keep the best epoch, evaluate on FG-NET, record
the epoch (history, metrics.csv, TensorBoard, log line), save the checkpoint.

Each step is a callable ``step(row, state)``: ``row`` is the epoch's metrics dict (``epoch`` 1-based, ``loss``,
``lr``, per-term losses, ``time``), which a step may extend; ``state`` the run's :class:`TrainingState` (with
``state.epoch`` already counting this epoch). Every process runs :class:`SaveCheckpoint` (it gathers the RNG
states of all of them); the other steps run on the main process only.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Protocol

import numpy as np
import torch

from agebias.atomic import write_json
from agebias.errors import UserError
from agebias import distributed as ddp
from agebias.finetune.cache import FeatureCache
from agebias.finetune.checkpointing import rng_state, save_checkpoint
from agebias.finetune.config import FinetuneConfig
from agebias.finetune.fgnet_eval import FgnetEvaluator
from agebias.finetune.freeze import run_stages
from agebias.finetune.logs import TensorBoardLog, write_metrics_csv
from agebias.finetune.state import TrainingState
from agebias.finetune.validation import validate_embeddings
from agebias.models.checkpoints import save_backbone
from agebias.models.preprocess import to_tensor

log = logging.getLogger(__name__)

Autocast = Callable[[], ContextManager] | None  # a context-manager factory for mixed precision (None: fp32)


class EpochEndStep(Protocol):
    def __call__(self, row: dict[str, Any], state: TrainingState) -> None: ...


class Validate:
    """Verification on the held-out identities: ``val_eer``, ``val_fnmr_at_fmr_1e-3``, ``val_fmr_realised``,
    ``val_genuine_pairs``, ``val_impostor_pairs`` (NaN rates without held-out images); its time is added to
    ``row["time"]``. Embeddings: the backbone in eval mode, the frozen prefix read from ``cache`` when given, else
    computed as the cache computes it (on channels-last images where ``prefix_channels_last``; see
    :func:`agebias.precision.prefix_channels_last`), so both give the same embeddings."""

    def __init__(self, crops: np.ndarray, subjects: list[str], seed: int, device: torch.device, autocast: Autocast,
                 cache: FeatureCache | None, prefix_channels_last: bool = False):
        self.crops = crops
        self.subjects = subjects
        self.seed = seed
        self.device = device
        self.autocast = autocast
        self.cache = cache
        self.prefix_format = torch.channels_last if prefix_channels_last else torch.contiguous_format

    def __call__(self, row: dict[str, Any], state: TrainingState) -> None:
        started = time.perf_counter()
        if not self.subjects:
            row.update({"val_eer": math.nan, "val_fnmr_at_fmr_1e-3": math.nan})
        else:
            embeddings = self.embed(state.model, state.depth)
            row.update(validate_embeddings(embeddings, self.subjects, seed=self.seed).as_dict())
        row["time"] = row.get("time", 0.0) + time.perf_counter() - started

    def embed(self, model: torch.nn.Module, depth: int, batch: int = 64) -> np.ndarray:
        was = model.training
        model.eval()
        out = []
        with torch.no_grad(), (self.autocast() if self.autocast else nullcontext()):
            for start in range(0, len(self.crops), batch):
                idx = np.arange(start, min(len(self.crops), start + batch))
                if self.cache is not None:
                    emb = model.forward_head(run_stages(model, self.cache.get(idx, self.device), depth))
                elif depth:  # the prefix as the cache runs it, then the rest on what the cache would return
                    x = to_tensor(self.crops[idx]).to(self.device).contiguous(memory_format=self.prefix_format)
                    fmap = run_stages(model, x, 0, depth).float().contiguous()
                    emb = model.forward_head(run_stages(model, fmap, depth))
                else:
                    emb = model(to_tensor(self.crops[idx]).to(self.device))
                out.append(emb.float().cpu().numpy())
        model.train(was)
        return np.concatenate(out)


class KeepBest:
    """``best/backbone.pth`` and ``best/epoch.json`` for the epoch with the lowest ``val_eer``, then the lowest
    ``val_fnmr_at_fmr_1e-3``; ties go to the later (further trained) epoch; epochs without a finite EER never win."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def __call__(self, row: dict[str, Any], state: TrainingState) -> None:
        eer, fnmr = row.get("val_eer"), row.get("val_fnmr_at_fmr_1e-3")
        if eer is None or not math.isfinite(eer):
            return
        key = (eer, fnmr if fnmr is not None and math.isfinite(fnmr) else 1.0)
        if state.best is not None and tuple(state.best["key"]) < key:
            return
        save_backbone(state.model, self.run_dir / "best" / "backbone.pth")
        state.best = {"epoch": row["epoch"], "key": list(key), "val_eer": eer, "val_fnmr_at_fmr_1e-3": fnmr}
        write_json(self.run_dir / "best" / "epoch.json", state.best)


class EvaluateFgnet:
    """``--eval-fgnet``: every ``every`` epochs and after the last one, the evaluator's report in
    ``fgnet/epoch_NNN/`` and its headline numbers in the row; a failure is noted in the row, training goes on."""

    def __init__(self, evaluator: FgnetEvaluator, run_dir: Path, device: torch.device, every: int, epochs: int):
        self.evaluator = evaluator
        self.run_dir = run_dir
        self.device = device
        self.every = every
        self.epochs = epochs

    def __call__(self, row: dict[str, Any], state: TrainingState) -> None:
        epoch = row["epoch"]
        if epoch % self.every and epoch != self.epochs:
            return
        try:
            row.update(self.evaluator(state.model, self.run_dir / "fgnet" / f"epoch_{epoch:03d}", self.device))
        except UserError as err:  # a bad FG-NET folder must not end the training run
            log.info(f"finetune: --eval-fgnet failed at epoch {epoch}: {err}")
            row["fgnet_note"] = str(err)


class RecordEpoch:
    """Append the row to the history, rewrite ``metrics.csv``, log to TensorBoard, and log one line."""

    def __init__(self, run_dir: Path, tensorboard: TensorBoardLog, epochs: int):
        self.run_dir = run_dir
        self.tensorboard = tensorboard
        self.epochs = epochs

    def __call__(self, row: dict[str, Any], state: TrainingState) -> None:
        state.history.append(row)
        write_metrics_csv(self.run_dir / "metrics.csv", state.history)
        self.tensorboard.log(row)
        log.info(epoch_line(row, self.epochs))


class SaveCheckpoint:
    """``checkpoints/last.pt`` with the state after this epoch and every process's RNG state (run by every
    process: they all send their RNG state; the main one writes)."""

    def __init__(self, path: Path, config: FinetuneConfig, dist: ddp.DistInfo):
        self.path = path
        self.config = config
        self.dist = dist

    def __call__(self, row: dict[str, Any], state: TrainingState) -> None:
        rngs = ddp.all_gather_objects(self.dist, rng_state())
        if self.dist.is_main:
            save_checkpoint(self.path, state.checkpoint(self.config, rngs))


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The log line of one epoch: loss, learning rate, validation EER and FNMR at FMR 1e-3, seconds."""
    def f(v) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"

    return (f"epoch {row['epoch']}/{epochs}: loss {f(row['loss'])}, lr {row['lr']:.3g}, "
            f"val EER {f(row.get('val_eer'))}, FNMR@FMR1e-3 {f(row.get('val_fnmr_at_fmr_1e-3'))}, "
            f"{row.get('time', 0):.1f} s")
