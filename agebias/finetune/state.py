""":class:`TrainingState`: what a run trains and carries from one epoch to the next, and its checkpoint form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from agebias.finetune.bf16_weights import Bf16Weights
from agebias.finetune.config import FinetuneConfig
from agebias.finetune.freeze import FreezeSummary
from agebias.finetune.hooks import TrainingHooks
from agebias.finetune.train_net import TrainNet


@dataclass
class TrainingState:
    """The model pieces, their optimizer and schedule, and the progress so far (epochs and steps completed, the
    per-epoch history and the best validation epoch). ``train_net`` is ``net``, DDP-wrapped under torchrun."""

    model: nn.Module  # the backbone
    head: nn.Module
    hooks: TrainingHooks
    net: TrainNet
    train_net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 on CUDA only
    frozen: FreezeSummary  # the frozen parts (kept in eval mode) and parameter counts
    depth: int  # frozen prefix stages run outside the trainable net (0: none; see agebias.finetune.freeze)
    steps_per_epoch: int
    bf16_weights: Bf16Weights | None = None  # bf16 on CPU with SGD/AdamW: weights kept in bf16 between steps
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per completed epoch (main process)
    best: dict[str, Any] | None = None  # the best validation epoch so far (see agebias.finetune.epoch_end.KeepBest)

    def checkpoint(self, config: FinetuneConfig, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint payload (see :mod:`agebias.finetune.checkpointing`); ``rngs``: every process's RNG state."""
        return {
            "config_hash": config.config_hash(), "config": config.training_dict(), "epoch": self.epoch,
            "step": self.step, "backbone": self.model.state_dict(), "head": self.head.state_dict(),
            "extra": self.net.extra.state_dict(), "hooks": self.hooks.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None, "rng": rngs,
            "data_order": {"seed": config.seed, "next_epoch": self.epoch}, "history": self.history,
            "best": self.best}

    def load(self, ck: dict[str, Any]) -> None:
        """Take every state of checkpoint ``ck`` except the RNGs (which the caller restores for its rank)."""
        self.model.load_state_dict(ck["backbone"])
        self.head.load_state_dict(ck["head"])
        self.net.extra.load_state_dict(ck["extra"])
        self.hooks.load_state_dict(ck["hooks"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.epoch, self.history, self.best = int(ck["epoch"]), list(ck["history"]), ck.get("best")
        self.step = int(ck.get("step", self.epoch * self.steps_per_epoch))
