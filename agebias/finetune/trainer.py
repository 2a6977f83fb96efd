"""Fine-tune a face-recognition backbone: ``run_finetune(FinetuneConfig) -> FinetuneResult``.

A run, in order: check the run directory (:mod:`agebias.finetune.run_dir`), prepare the data, build the model
(backbone, freezing, margin head, mitigation hooks, optimizer, LR schedule), restore ``checkpoints/last.pt`` when
continuing, cache the frozen prefix, then train epoch by epoch and run the epoch-end steps
(:mod:`agebias.finetune.epoch_end`: validate, keep the best epoch, FG-NET evaluation, record, checkpoint).

Per epoch, frozen parts stay in eval mode (BatchNorm statistics fixed) after every ``train()``; when the frozen
parts are a prefix of the network it runs under ``no_grad`` and, by default, its outputs come from a cache
computed once (:mod:`agebias.finetune.cache`); the trainable rest, the margin head and the hooks' modules run under
autograd (DDP-wrapped under torchrun).

Run directory::

    config.json            every setting, config_hash, data summary, model and freezing summary
    metrics.csv            one row per epoch (see agebias.finetune.logs); tensorboard/ when installed
    skipped.csv            input files not used, with the reason
    checkpoints/last.pt    the full training state after the last completed epoch
    best/backbone.pth      backbone of the best validation epoch: lowest EER, then lowest FNMR at FMR 1e-3,
                           ties to the later epoch (+ best/epoch.json)
    backbone.pth           final backbone, arcface_torch layout (loadable by arcface_torch and `agebias embed`)
    model.onnx             with --onnx
    fgnet/epoch_NNN/       evaluator reports with --eval-fgnet
    done.json              written last: the run is complete

A directory holding a run with other settings is refused; the same settings finished return the existing result;
the same settings unfinished continue with ``resume=True`` (final weights equal an uninterrupted run on CPU), as
does a run given more ``epochs`` when its schedule does not depend on the total (see run_dir).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agebias.errors import DataError, UserError
from agebias import distributed as ddp
from agebias.devices import resolve_device
from agebias.finetune import bf16_prelu, bf16_weights, gemm_weight_grad, input_bn_fold
from agebias.finetune.backbone import arch_name, build_backbone, embedding_dim
from agebias.finetune.cache import FeatureCache, build_cache
from agebias.finetune.checkpointing import load_checkpoint, set_rng_state
from agebias.finetune.config import FinetuneConfig
from agebias.finetune.data import TrainingData, epoch_batches, epoch_order, parse_source, prepare_data
from agebias.finetune.epoch_end import (Autocast, EpochEndStep, EvaluateFgnet, KeepBest, RecordEpoch,
                                        SaveCheckpoint, Validate)
from agebias.finetune.fgnet_eval import FgnetEvaluator
from agebias.finetune.freeze import freeze, has_stages, parse_frozen_layers, run_stages, set_train_mode, stage_names
from agebias.finetune.hooks import HookSetup, create_hooks
from agebias.finetune.logs import TensorBoardLog
from agebias.finetune.result import FinetuneResult, load_result
from agebias.finetune.run_dir import (RunDirState, check_checkpoint, check_run_dir, forget_finish, write_done,
                                      write_run_record)
from agebias.finetune.schedule import lr_factor, make_optimizer
from agebias.finetune.state import TrainingState
from agebias.finetune.train_net import TrainNet
from agebias.models.checkpoints import save_backbone
from agebias.models.heads import create_head
from agebias.models.onnx_export import export_onnx
from agebias.models.preprocess import to_tensor
from agebias.precision import channels_last, cpu_bf16_flags, prefix_channels_last, resolve_precision
from agebias.progress import bar, tqdm

__all__ = ["FinetuneConfig", "FinetuneResult", "TrainNet", "lr_factor", "make_optimizer", "run_finetune"]

log = logging.getLogger(__name__)


def run_finetune(config: FinetuneConfig | dict[str, Any]) -> FinetuneResult:
    """Train as configured (see the module notes); returns the run's outputs and per-epoch history."""
    if isinstance(config, dict):
        config = FinetuneConfig.from_dict(config)
    run = _Run(config)
    try:
        return run.execute()
    finally:
        run.cleanup()


def autocast_factory(precision: str, device: torch.device) -> Autocast:
    """A zero-argument context-manager factory for the requested precision (None for fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cpu" and precision == "fp16":
        raise UserError("--precision fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's global generator and Python's ``random`` (model init, head init, hooks)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


class _Run:
    """One call of :func:`run_finetune`; :meth:`execute` runs the steps in order, each a method below."""

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.run_dir = Path(config.out).expanduser()
        self.checkpoint_path = self.run_dir / "checkpoints" / "last.pt"
        self.dist = ddp.DistInfo()
        self.device = torch.device("cpu")
        self.autocast: Autocast = None
        self.dir_state = RunDirState("new")
        self.data: TrainingData | None = None
        self.weights: list[float] = []  # epoch share of each used source
        self.caches: list[FeatureCache] = []  # closed by cleanup()
        self.train_cache: FeatureCache | None = None
        self.tb: TensorBoardLog | None = None

    def execute(self) -> FinetuneResult:
        """Check the run directory, then load data, build, restore, record, cache, train with the epoch-end steps,
        finish."""
        self.device = resolve_device(self.config.device)  # under torchrun: cuda:LOCAL_RANK
        self.dist = ddp.init_distributed(self.device.type)
        self.config = cfg = self.concrete_precision(self.config)
        self.dir_state = check_run_dir(self.run_dir, cfg)
        if self.dir_state.kind == "done":
            log.info(f"finetune: {self.run_dir} already holds this finished run; nothing to do")
            return load_result(self.run_dir)
        self.autocast = autocast_factory(cfg.precision, self.device)
        seed_everything(cfg.seed)
        self.data = self.load_data()
        state = self.build_model(self.data)
        if self.dir_state.kind == "resume":
            self.restore(state)
        self.record_start(state)
        val_cache = self.cache_frozen_prefix(state)
        steps = self.epoch_end_steps(val_cache)
        end_epoch = cfg.epochs if cfg.stop_after_epochs is None else min(cfg.epochs,
                                                                          state.epoch + cfg.stop_after_epochs)
        for epoch in range(state.epoch, end_epoch):
            row = self.train_epoch(state, epoch)
            for step in steps:
                step(row, state)
            ddp.barrier(self.dist)
        return self.finish(state)

    def cleanup(self) -> None:
        for cache in self.caches:
            cache.close()
        if self.tb is not None:
            self.tb.close()
        cache_dir = self.run_dir / "cache"
        if self.dist.is_main and cache_dir.is_dir() and not any(cache_dir.iterdir()):
            cache_dir.rmdir()
        ddp.shutdown(self.dist)

    # -- the steps of execute, in order --
    def concrete_precision(self, cfg: FinetuneConfig) -> FinetuneConfig:
        """``cfg`` with ``precision="auto"`` replaced by what it means on this device (bf16 where native, else
        fp32): the run directory records, and its settings hash covers, the precision that trains."""
        if cfg.precision != "auto":
            return cfg
        chosen = resolve_precision("auto", self.device)
        if self.dist.is_main:
            why = (f"native bf16 ({', '.join(cpu_bf16_flags())})" if self.device.type == "cpu" else "GPU bf16")
            log.info(f"finetune: --precision auto: {chosen} on {self.device}"
                     + (f" ({why})" if chosen == "bf16" else " (no native bf16 here)"))
        return dataclasses.replace(cfg, precision=chosen)

    def load_data(self) -> TrainingData:
        """Read, align and split the sources (rank 0 first, so that the alignment cache is filled once)."""
        cfg = self.config
        sources = [parse_source(s) for s in cfg.data]
        unused = [s.path for s in sources if s.weight == 0]
        sources = [s for s in sources if s.weight > 0]  # weight 0 leaves a source out entirely
        if not sources:
            raise DataError("every --data source has weight 0; nothing to train on")
        if unused and self.dist.is_main:
            log.info(f"finetune: source(s) with weight 0 left out: {', '.join(unused)}")
        self.weights = [s.weight for s in sources]
        if not self.dist.is_main:
            ddp.barrier(self.dist)
        data = prepare_data(sources, aligned=cfg.aligned, detector=cfg.detector, val_fraction=cfg.val_fraction,
                            seed=cfg.seed, age_bins=cfg.age_bins, cache_dir=cfg.align_cache)
        if self.dist.is_main:
            ddp.barrier(self.dist)
        return data

    def build_model(self, data: TrainingData) -> TrainingState:
        """Backbone (frozen parts fixed), head, hooks, optimizer, LR schedule, grad scaler, DDP wrapper."""
        cfg, device = self.config, self.device
        model = build_backbone(cfg).float()
        frozen = freeze(model, parse_frozen_layers(cfg.frozen_layers, stage_names(model)))
        if frozen.parts and cfg.init == "random" and self.dist.is_main:
            log.info("finetune: note: frozen layers of a randomly initialised backbone stay random (their BatchNorms "
                     "keep their initial statistics); use --frozen-layers none to train from scratch")
        staged = has_stages(model)
        depth = frozen.prefix_depth if staged else 0
        model.to(device)
        set_train_mode(model, frozen.parts)
        emb_dim = embedding_dim(model)
        head = create_head(cfg.head, emb_dim, len(data.class_names), **cfg.head_kwargs()).to(device)
        hooks = create_hooks(cfg.mitigation)
        steps_per_epoch = len(self.batches_of(epoch_order(data.train.source_index, self.weights, cfg.seed, 0)))
        if steps_per_epoch == 0:
            raise DataError(f"{len(data.train)} training image(s) give no batch of >= 2 per process; add data")
        hooks.setup(HookSetup(labels=data.labels, groups=data.train.groups, num_classes=len(data.class_names),
                              group_names=data.group_names, embedding_dim=emb_dim,
                              feature_channels=getattr(model, "widths", (0, 0, 0, 0))[-1] if staged else 0,
                              head=head, device=device, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                              batch_size=cfg.batch_size, seed=cfg.seed, world_size=self.dist.world_size,
                              options=cfg.to_dict()))
        net = TrainNet(model, head, hooks, depth, cfg.focal_gamma, channels_last(cfg.precision)).to(device)
        if converted := gemm_weight_grad.enable_for(net, cfg.precision, device):
            log.debug(f"finetune: {converted} convolution(s) take their bf16 weight gradient as one matrix product")
        if converted := bf16_prelu.enable_for(net, cfg.precision, device):
            log.debug(f"finetune: {converted} PReLU(s) take their bf16 backward pass from the compiled kernel")
        if converted := input_bn_fold.enable_for(net, device):
            log.debug(f"finetune: {converted} block(s) may fold their first BatchNorm's gradient into conv1's")
        optimizer = make_optimizer(cfg, [p for p in net.parameters() if p.requires_grad])
        kept_bf16 = bf16_weights.enable_for(model, optimizer, cfg.precision, device, self.dist.world_size)
        if kept_bf16 is not None:
            log.debug(f"finetune: {len(kept_bf16)} weight(s) kept in bf16 between steps, updated in one pass")
        train_net: nn.Module = net
        if self.dist.enabled:
            train_net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=any(True for _ in net.extra.parameters()))
        return TrainingState(
            model=model, head=head, hooks=hooks, net=net, train_net=train_net, optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch)),
            scaler=torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None,
            frozen=frozen, depth=depth, steps_per_epoch=steps_per_epoch, bf16_weights=kept_bf16)

    def restore(self, state: TrainingState) -> None:
        """Continue from checkpoints/last.pt: every state, and this process's RNG states."""
        ck = load_checkpoint(self.checkpoint_path)
        check_checkpoint(ck, self.config, self.checkpoint_path)
        state.load(ck)
        rngs = ck["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        extends = self.dir_state.extends_from
        log.info(f"finetune: resuming {self.run_dir} after epoch {state.epoch}"
                 + (f", extended from {extends} to {self.config.epochs} epochs" if extends is not None else ""))

    def record_start(self, state: TrainingState) -> None:
        """On the main process: config.json (after removing the finish marks of a run being extended),
        classes.json, skipped.csv, and the TensorBoard writer."""
        if not self.dist.is_main:
            return
        cfg = self.config
        if self.dir_state.extends_from is not None:
            forget_finish(self.run_dir)
        model = {"arch": arch_name(state.model, cfg), "frozen_parts": list(state.frozen.parts),
                 "frozen_prefix_stages": state.depth, "trainable_params": state.frozen.trainable_params,
                 "frozen_params": state.frozen.frozen_params, "num_classes": len(self.data.class_names),
                 "head": cfg.head, "head_kwargs": cfg.head_kwargs()}
        write_run_record(self.run_dir, cfg, self.data, model, state.hooks.describe(), self.dist.world_size,
                         state.epoch)
        self.tb = TensorBoardLog(self.run_dir / "tensorboard", cfg.tensorboard, state.epoch)

    def cache_frozen_prefix(self, state: TrainingState) -> FeatureCache | None:
        """Cache the frozen prefix's outputs for the training images (``self.train_cache``) and, on the main
        process, the validation images (returned), when there is a prefix and no random augmentation."""
        cfg = self.config
        set_train_mode(state.model, state.frozen.parts)
        if state.depth == 0 or cfg.augment != "none" or cfg.cache == "off":
            return None
        self.train_cache = self.cache_prefix(state, self.data.train.crops, "train")
        if self.dist.is_main and len(self.data.val):
            return self.cache_prefix(state, self.data.val.crops, "val")
        return None

    def epoch_end_steps(self, val_cache: FeatureCache | None) -> list[EpochEndStep]:
        """The steps after each epoch, in order (main process: all; others: the checkpoint's RNG exchange)."""
        cfg, val = self.config, self.data.val
        save = SaveCheckpoint(self.checkpoint_path, cfg, self.dist)
        if not self.dist.is_main:
            return [save]
        steps: list[EpochEndStep] = [Validate(val.crops, val.subjects, cfg.seed, self.device, self.autocast,
                                              val_cache, prefix_channels_last(cfg.precision, self.device)),
                                     KeepBest(self.run_dir)]
        if cfg.eval_fgnet:
            steps.append(EvaluateFgnet(FgnetEvaluator(cfg.eval_fgnet, cfg.align_cache), self.run_dir, self.device,
                                       cfg.eval_every, cfg.epochs))
        return [*steps, RecordEpoch(self.run_dir, self.tb, cfg.epochs), save]

    def train_epoch(self, state: TrainingState, epoch: int) -> dict[str, Any]:
        """One pass over this epoch's batches; returns the epoch's row (mean losses across processes, the LR at
        the end, training seconds) and counts the epoch in ``state``."""
        cfg, device, data = self.config, self.device, self.data
        started = time.perf_counter()
        state.net.train()
        set_train_mode(state.model, state.frozen.parts)  # frozen parts back in eval mode after every train()
        batches = self.batches_for_epoch(state, epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + self.dist.rank)
        loss_sum, n_steps, term_sums = 0.0, 0, {}
        with self.progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") as progress:
            for idx in batches:
                x = self.inputs(state, idx, gen)
                orig = torch.from_numpy(data.labels[idx]).to(device)
                groups = torch.from_numpy(data.train.groups[idx]).to(device)
                labels = state.hooks.transform_labels(orig, groups, gen)
                with self.autocast() if self.autocast else nullcontext():
                    total, head_loss, terms = state.train_net(x, labels, orig, groups, epoch, state.step, gen)
                if state.scaler is None and not torch.isfinite(total.detach()):  # (fp16: the scaler skips these)
                    raise UserError(f"the loss became {float(total)} at epoch {epoch + 1}, step {n_steps + 1}; "
                                    f"lower --lr or check the backbone (the last checkpoint is kept)")
                self.optimizer_step(state, total)
                n_steps += 1
                loss_sum += float(total.detach())
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + float(v)
                term_sums["head_loss"] = term_sums.get("head_loss", 0.0) + float(head_loss)
                progress.update(1)
                if self.dist.is_main:
                    progress.set_postfix(loss=f"{loss_sum / n_steps:.4f}")
        row: dict[str, Any] = {"epoch": epoch + 1,
                               "loss": ddp.mean_across(self.dist, loss_sum / max(1, n_steps), device),
                               "lr": state.optimizer.param_groups[0]["lr"]}
        for k, v in term_sums.items():
            row[k] = ddp.mean_across(self.dist, v / max(1, n_steps), device)
        row["time"] = time.perf_counter() - started
        state.epoch = epoch + 1
        return row

    def finish(self, state: TrainingState) -> FinetuneResult:
        """The result; when every epoch is done: backbone.pth, model.onnx (--onnx), done.json (main process)."""
        cfg = self.config
        completed = state.epoch >= cfg.epochs
        result = FinetuneResult(self.run_dir, None, None, state.history, (state.best or {}).get("epoch"),
                                completed, cfg.config_hash(), None, state.epoch)
        if self.dist.is_main:
            best_path = self.run_dir / "best" / "backbone.pth"
            result.best_path = best_path if best_path.is_file() else None
            if completed:
                result.backbone_path = save_backbone(state.model, self.run_dir / "backbone.pth")
                if cfg.onnx:
                    result.onnx_path = export_onnx(state.model, self.run_dir / "model.onnx")
                cache_dir = self.run_dir / "cache"
                if cache_dir.is_dir() and not cfg.cache_dir:
                    shutil.rmtree(cache_dir, ignore_errors=True)
                write_done(self.run_dir, result)
        ddp.barrier(self.dist)
        return result

    # -- pieces of the steps --
    def batches_of(self, order: np.ndarray) -> list[np.ndarray]:
        """This process's batches of one epoch's image order."""
        return epoch_batches(order, self.config.batch_size, self.dist.rank, self.dist.world_size)

    def batches_for_epoch(self, state: TrainingState, epoch: int) -> list[np.ndarray]:
        """The hooks' batches when they make their own (split across processes), else the weighted shuffle."""
        cfg, d = self.config, self.dist
        custom = state.hooks.make_batches(epoch, np.random.default_rng([cfg.seed, epoch, 11]), cfg.batch_size)
        if custom is None:
            return self.batches_of(epoch_order(self.data.train.source_index, self.weights, cfg.seed, epoch))
        custom = [np.asarray(b, dtype=np.int64) for b in custom if len(b) >= 2]
        n = (len(custom) // d.world_size) * d.world_size
        return custom[:n][d.rank::d.world_size]

    def inputs(self, state: TrainingState, idx: np.ndarray, gen: torch.Generator) -> torch.Tensor:
        """The trainable net's input for images ``idx``: cached or recomputed frozen-prefix outputs, or images."""
        if self.train_cache is not None:
            return self.train_cache.get(idx, self.device)
        x = to_tensor(self.data.train.crops[idx])
        if self.config.augment == "flip":
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
        x = x.to(self.device)
        if state.depth == 0:
            return x
        with torch.no_grad(), (self.autocast() if self.autocast else nullcontext()):
            return run_stages(state.model, self.prefix_layout(x), 0, state.depth).float()

    def prefix_layout(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the frozen prefix's memory layout (:func:`agebias.precision.prefix_channels_last`), the
        same for cached and recomputed prefix outputs."""
        if prefix_channels_last(self.config.precision, self.device):
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def optimizer_step(self, state: TrainingState, total: torch.Tensor) -> None:
        """Backward, optimizer step (through the fp16 grad scaler when there is one), LR schedule step."""
        state.optimizer.zero_grad(set_to_none=True)
        if state.bf16_weights is not None:
            state.bf16_weights.zero_grad()
        if state.scaler is not None:
            state.scaler.scale(total).backward()
            state.scaler.step(state.optimizer)
            state.scaler.update()
        else:
            total.backward()
            if state.bf16_weights is not None:  # the weights kept in bf16 (they have no fp32 grad: step skips them)
                state.bf16_weights.step(state.optimizer)
            state.optimizer.step()
        state.scheduler.step()
        state.step += 1

    def cache_prefix(self, state: TrainingState, crops: np.ndarray, name: str) -> FeatureCache:
        """The frozen prefix's outputs for ``crops``, computed once (see agebias.finetune.cache)."""
        model, depth, cfg = state.model, state.depth, self.config
        with torch.no_grad():
            first = self.prefix_layout(to_tensor(crops[:1]).to(self.device))
            shape = tuple(run_stages(model, first, 0, depth).shape[1:])
        cache = build_cache(lambda x: run_stages(model, x, 0, depth),
                            lambda idx: self.prefix_layout(to_tensor(crops[idx])),
                            len(crops), sample_shape=shape, dtype=cfg.cache_dtype, mode=cfg.cache,
                            folder=Path(cfg.cache_dir) if cfg.cache_dir else self.run_dir / "cache",
                            name=f"{name}-r{self.dist.rank}", device=self.device, autocast=self.autocast,
                            desc=f"caching frozen layers ({name})")
        self.caches.append(cache)
        return cache

    def progress(self, total: int, desc: str):
        """A progress bar on the main process; a disabled one elsewhere."""
        if self.dist.is_main:
            return bar(total, desc, unit="step")
        return tqdm(total=total, disable=True)
