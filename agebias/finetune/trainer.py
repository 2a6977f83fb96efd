"""Fine-tune a face-recognition backbone: ``run_finetune(FinetuneConfig) -> FinetuneResult``.

The loop, per epoch: frozen parts stay in eval mode (BatchNorm statistics fixed) after every ``train()``; when the
frozen parts are a prefix of the network it runs under ``no_grad`` and, by default, its outputs come from a cache
computed once (see :mod:`agebias.finetune.cache`); the trainable rest, the margin head and the mitigation hooks
run under autograd (DDP-wrapped under torchrun); then validation on the held-out identities (EER, FNMR at FMR
1e-3), the best epoch's backbone, the metric logs and an atomic checkpoint.

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
the same settings unfinished continue with ``resume=True`` (final weights equal an uninterrupted run on CPU).
"""

from __future__ import annotations

import logging
import csv
import io
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agebias.atomic import write_json, write_text
from agebias.errors import UserError
from agebias.finetune import ddp
from agebias.finetune.cache import FeatureCache, build_cache
from agebias.finetune.checkpointing import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from agebias.finetune.config import FinetuneConfig, diff_keys
from agebias.finetune.data import TrainingData, epoch_batches, epoch_order, parse_source, prepare_data
from agebias.finetune.freeze import STAGES, freeze, parse_frozen_layers, run_stages, set_train_mode
from agebias.finetune.hooks import HookSetup, StepContext, TrainingHooks, as_loss_terms, create_hooks
from agebias.finetune.logs import TensorBoardLog, write_metrics_csv
from agebias.finetune.validation import pair_scores, verification_metrics
from agebias.models.heads import create_head, margin_loss
from agebias.progress import bar

log = logging.getLogger(__name__)

RUN_KIND = "agebias-finetune"


@dataclass
class FinetuneResult:
    run_dir: Path
    backbone_path: Path | None  # final backbone.pth (None while the run is unfinished)
    best_path: Path | None  # best/backbone.pth (None without validation)
    history: list[dict[str, Any]]
    best_epoch: int | None = None  # 1-based
    completed: bool = True
    config_hash: str = ""
    onnx_path: Path | None = None
    epochs_done: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# run directory


def check_run_dir(run_dir: Path, config: FinetuneConfig) -> str:
    """``new`` | ``done`` | ``resume`` | ``restart``; raises :class:`UserError` for a directory holding anything
    else than a run with these settings (nothing is touched)."""
    if not run_dir.exists():
        return "new"
    if not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a directory")
    if not any(run_dir.iterdir()):
        return "new"
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"--out {run_dir} is not empty and holds no fine-tuning run (no config.json); "
                        f"choose another directory")
    try:
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{cfg_path} is unreadable; choose another --out") from None
    if old.get("kind") != RUN_KIND:
        raise UserError(f"--out {run_dir} holds other output ({old.get('kind', 'unknown kind')}); choose another")
    if old.get("config_hash") != config.config_hash():
        keys = diff_keys(old.get("config", {}), config.to_dict())
        raise UserError(f"--out {run_dir} holds another run (different {', '.join(keys) or 'settings'}); "
                        f"choose another directory or delete it")
    if (run_dir / "done.json").is_file():
        return "done"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        if not config.resume:
            raise UserError(f"--out {run_dir} holds an unfinished run with these settings; pass --resume to "
                            f"continue it")
        return "resume"
    return "restart"


def load_result(run_dir: Path) -> FinetuneResult:
    done = json.loads((run_dir / "done.json").read_text(encoding="utf-8"))
    return FinetuneResult(
        run_dir=run_dir, backbone_path=run_dir / "backbone.pth",
        best_path=(run_dir / "best" / "backbone.pth") if (run_dir / "best" / "backbone.pth").is_file() else None,
        history=done.get("history", []), best_epoch=done.get("best_epoch"), completed=True,
        config_hash=done.get("config_hash", ""),
        onnx_path=(run_dir / "model.onnx") if (run_dir / "model.onnx").is_file() else None,
        epochs_done=int(done.get("epochs", 0)))


# ---------------------------------------------------------------------------------------------------------------
# model pieces


def build_backbone(config: FinetuneConfig) -> nn.Module:
    """A random-init architecture (``init="random"``) or a checkpoint / iresnet ONNX file."""
    from agebias.models.registry import create_backbone

    if config.init == "random":
        return create_backbone(config.arch or config.backbone)
    path = Path(config.backbone).expanduser()
    if not path.exists():
        try:
            create_backbone(config.backbone)
        except UserError:
            raise UserError(f"backbone {path} not found") from None
        raise UserError(f"'{config.backbone}' is an architecture name, not a weights file: pass --init random to "
                        f"train it from random weights, or give a .pth/.safetensors/.onnx file")
    if path.suffix.lower() == ".onnx":
        try:
            from agebias.models.onnx import import_iresnet_onnx
        except ImportError:
            raise UserError("importing ONNX backbones needs agebias.models.onnx, which is not installed") from None
        model = import_iresnet_onnx(path)
        if config.arch:
            _check_arch(model, config.arch, path)
        return model
    from agebias.models.checkpoints import load_backbone

    return load_backbone(path, arch=config.arch, trust_checkpoint=config.trust_checkpoint)


def _check_arch(model: nn.Module, arch: str, path: Path) -> None:
    from agebias.models.checkpoints import check_state_dict
    from agebias.models.registry import create_backbone

    check_state_dict(create_backbone(arch), model.state_dict(), source=str(path), arch=arch)


def _is_iresnet(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("forward_stem", "forward_head", *STAGES[1:]))


def _embedding_dim(model: nn.Module) -> int:
    dim = getattr(model, "num_features", None)
    if isinstance(dim, int):
        return dim
    was = model.training
    model.eval()
    with torch.no_grad():
        dim = int(model(torch.zeros(2, 3, 112, 112, device=next(model.parameters()).device)).shape[1])
    model.train(was)
    return dim


def _arch_name(model: nn.Module, config: FinetuneConfig) -> str | None:
    if config.arch:
        return config.arch
    if config.init == "random":
        return config.backbone
    try:
        from agebias.models.checkpoints import infer_arch

        return infer_arch(model.state_dict())
    except Exception:  # noqa: BLE001 - informative only
        return None


class TrainNet(nn.Module):
    """Trainable part + head + hook modules; ``forward`` returns ``(total loss, head loss, {term: loss})``.

    ``start`` is the first stage run here (0 = stem ... 5 = only bn2/fc/features); its input is the frozen
    prefix's output (or the images when ``start == 0``).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, hooks: TrainingHooks, start: int, focal_gamma: float):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.extra = hooks.modules() or nn.Module()
        self._hooks = [hooks]  # a list so that the hooks object is not registered as a submodule
        self.start = start
        self.focal_gamma = focal_gamma
        self.iresnet = _is_iresnet(backbone)

    def embed_from(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self.iresnet:
            fmap = run_stages(self.backbone, x, self.start)
            return fmap, self.backbone.forward_head(fmap)
        return None, self.backbone(x)

    def forward(self, x, labels, original_labels, groups, epoch: int, step: int, generator: torch.Generator):
        hooks = self._hooks[0]
        fmap, emb = self.embed_from(x)
        ctx = StepContext(epoch=epoch, step=step, labels=labels, original_labels=original_labels, groups=groups,
                          feature_maps=fmap, embeddings=emb, head=self.head,
                          forward_head=getattr(self.backbone, "forward_head", None), generator=generator)
        emb = hooks.transform_embeddings(emb, ctx)
        ctx.embeddings = emb
        logits = self.head(emb, labels, hooks.margin_offsets(ctx))
        loss = margin_loss(logits, labels, self.focal_gamma)
        ctx.logits, ctx.loss = logits, loss
        terms = as_loss_terms(hooks.extra_loss(ctx))
        total = loss + sum(terms.values()) if terms else loss
        return total, loss.detach(), {k: v.detach() for k, v in terms.items()}


def lr_factor(config: FinetuneConfig, steps_per_epoch: int):
    """LR multiplier per optimizer step: linear warm-up, then constant / cosine to 0 / step decay."""
    total = max(1, config.epochs * steps_per_epoch)
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    milestones = sorted(config.step_epochs or [max(1, config.epochs // 2), max(1, (3 * config.epochs) // 4)])

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if config.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        if config.scheduler == "step":
            epoch = step // max(1, steps_per_epoch)
            return config.step_gamma ** sum(1 for m in milestones if epoch >= m)
        return 1.0

    return factor


def make_optimizer(config: FinetuneConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW, with the fused kernel where this torch build has one: the same update
    in one pass over all parameters (on CPU the step of iresnet50's trainable tail drops from ~0.3 s to ~0.03 s)."""
    if config.optimizer == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": config.lr, "momentum": config.momentum,
                                        "weight_decay": config.weight_decay}
    else:
        cls, kwargs = torch.optim.AdamW, {"lr": config.lr, "weight_decay": config.weight_decay}
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device / dtype / torch release
        return cls(params, **kwargs)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec in ("auto", "", None):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cuda" and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank}")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise UserError(f"bad --device '{spec}'") from None


def autocast_factory(precision: str, device: torch.device):
    """A zero-argument context-manager factory for the requested precision (None for fp32)."""
    if precision == "fp32":
        return None
    if device.type == "cpu" and precision == "fp16":
        raise UserError("--precision fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# the run


def run_finetune(config: FinetuneConfig | dict[str, Any]) -> FinetuneResult:
    """Train as configured (see the module notes); returns the run's outputs and per-epoch history."""
    if isinstance(config, dict):
        config = FinetuneConfig.from_dict(config)
    run = _Run(config)
    try:
        return run.execute()
    finally:
        run.cleanup()


class _Run:
    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.run_dir = Path(config.out).expanduser()
        self.caches: list[FeatureCache] = []
        self.tb: TensorBoardLog | None = None
        self.dist = ddp.DistInfo()

    # -- helpers --
    def _main(self) -> bool:
        return self.dist.is_main

    def cleanup(self) -> None:
        for cache in self.caches:
            cache.close()
        if self.tb is not None:
            self.tb.close()
        cache_dir = self.run_dir / "cache"
        if self._main() and cache_dir.is_dir() and not any(cache_dir.iterdir()):
            cache_dir.rmdir()
        ddp.shutdown(self.dist)

    def execute(self) -> FinetuneResult:
        cfg = self.config
        device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = ddp.init_distributed(device.type)
        self.device = device
        state = check_run_dir(self.run_dir, cfg)
        if state == "done":
            log.info(f"finetune: {self.run_dir} already holds this finished run; nothing to do")
            return load_result(self.run_dir)
        self.autocast = autocast_factory(cfg.precision, device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2 ** 32))
        random.seed(cfg.seed)

        # data (rank 0 first, so that the alignment cache is filled once)
        sources = [parse_source(s) for s in cfg.data]
        unused = [s.path for s in sources if s.weight == 0]
        sources = [s for s in sources if s.weight > 0]  # weight 0 leaves a source out entirely
        if not sources:
            raise UserError("every --data source has weight 0; nothing to train on")
        if unused and self._main():
            log.info(f"finetune: source(s) with weight 0 left out: {', '.join(unused)}")
        if not self._main():
            ddp.barrier(self.dist)
        data = prepare_data(sources, aligned=cfg.aligned, detector=cfg.detector, val_fraction=cfg.val_fraction,
                            seed=cfg.seed, age_bins=cfg.age_bins, cache_dir=cfg.align_cache)
        if self._main():
            ddp.barrier(self.dist)
        self.data = data

        # model, freezing, head, hooks
        model = build_backbone(cfg).float()
        parts = parse_frozen_layers(cfg.frozen_layers)
        fsum = freeze(model, parts)
        if parts and cfg.init == "random" and self._main():
            log.info("finetune: note: frozen layers of a randomly initialised backbone stay random (their BatchNorms "
                 "keep their initial statistics); use --frozen-layers none to train from scratch")
        iresnet = _is_iresnet(model)
        depth = fsum.prefix_depth if iresnet else 0
        model.to(device)
        set_train_mode(model, parts)
        emb_dim = _embedding_dim(model)
        head = create_head(cfg.head, emb_dim, len(data.class_names), **cfg.head_kwargs()).to(device)
        hooks = create_hooks(cfg.mitigation)
        weights = [s.weight for s in sources]
        steps_per_epoch = len(epoch_batches(epoch_order(data.train.source_index, weights, cfg.seed, 0),
                                            cfg.batch_size, self.dist.rank, self.dist.world_size))
        if steps_per_epoch == 0:
            raise UserError(f"{len(data.train)} training image(s) give no batch of >= 2 per process; add data")
        feat_channels = getattr(model, "widths", (0, 0, 0, 0))[-1] if iresnet else 0
        hooks.setup(HookSetup(labels=data.labels, groups=data.train.groups, num_classes=len(data.class_names),
                              group_names=data.group_names, embedding_dim=emb_dim, feature_channels=feat_channels,
                              head=head, device=device, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                              batch_size=cfg.batch_size, seed=cfg.seed, world_size=self.dist.world_size,
                              options=cfg.to_dict()))
        net = TrainNet(model, head, hooks, depth, cfg.focal_gamma).to(device)
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = make_optimizer(cfg, params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
        scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and device.type == "cuda" else None
        train_net: nn.Module = net
        if self.dist.enabled:
            train_net = nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=any(True for _ in net.extra.parameters()))

        # resume
        start_epoch, history, best, step = 0, [], None, 0
        ckpt_path = self.run_dir / "checkpoints" / "last.pt"
        if state == "resume":
            ck = load_checkpoint(ckpt_path, cfg.config_hash())
            model.load_state_dict(ck["backbone"])
            head.load_state_dict(ck["head"])
            net.extra.load_state_dict(ck["extra"])
            hooks.load_state_dict(ck["hooks"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start_epoch, history, best = int(ck["epoch"]), list(ck["history"]), ck.get("best")
            step = int(ck.get("step", start_epoch * steps_per_epoch))
            rngs = ck["rng"]
            set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
            log.info(f"finetune: resuming {self.run_dir} after epoch {start_epoch}")

        if self._main():
            self._write_config(data, fsum, depth, model, hooks, start_epoch)
            self.tb = TensorBoardLog(self.run_dir / "tensorboard", cfg.tensorboard, start_epoch)

        # frozen-prefix caches
        set_train_mode(model, parts)
        use_cache = depth > 0 and cfg.augment == "none" and cfg.cache != "off"
        train_cache = val_cache = None
        if use_cache:
            train_cache = self._cache(model, depth, data.train.crops, "train")
            if self._main() and len(data.val):
                val_cache = self._cache(model, depth, data.val.crops, "val")

        # epochs
        end_epoch = cfg.epochs if cfg.stop_after_epochs is None else min(cfg.epochs,
                                                                          start_epoch + cfg.stop_after_epochs)
        labels_all = torch.from_numpy(data.labels)
        groups_all = torch.from_numpy(data.train.groups)
        for epoch in range(start_epoch, end_epoch):
            t0 = time.perf_counter()
            net.train()
            set_train_mode(model, parts)  # frozen parts back in eval mode after every train()
            batches = self._batches(hooks, epoch, weights)
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 1009 + self.dist.rank)
            loss_sum, n_steps, term_sums = 0.0, 0, {}
            with self._bar(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") as progress:
                for idx in batches:
                    x = self._inputs(model, depth, idx, train_cache, gen)
                    orig = labels_all[idx].to(device)
                    groups = groups_all[idx].to(device)
                    labels = hooks.transform_labels(orig, groups, gen)
                    with self.autocast() if self.autocast else nullcontext():
                        total, head_loss, terms = train_net(x, labels, orig, groups, epoch, step, gen)
                    if scaler is None and not torch.isfinite(total.detach()):  # (fp16: the scaler skips such steps)
                        raise UserError(f"the loss became {float(total)} at epoch {epoch + 1}, step {n_steps + 1}; "
                                        f"lower --lr or check the backbone (the last checkpoint is kept)")
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(total).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        total.backward()
                        optimizer.step()
                    scheduler.step()
                    step += 1
                    n_steps += 1
                    loss_sum += float(total.detach())
                    for k, v in terms.items():
                        term_sums[k] = term_sums.get(k, 0.0) + float(v)
                    term_sums["head_loss"] = term_sums.get("head_loss", 0.0) + float(head_loss)
                    progress.update(1)
                    if not self._main():
                        continue
                    progress.set_postfix(loss=f"{loss_sum / n_steps:.4f}")
            row: dict[str, Any] = {"epoch": epoch + 1,
                                   "loss": ddp.mean_across(self.dist, loss_sum / max(1, n_steps), device),
                                   "lr": optimizer.param_groups[0]["lr"]}
            for k, v in term_sums.items():
                row[k] = ddp.mean_across(self.dist, v / max(1, n_steps), device)
            if self._main():
                row.update(self._validate(model, depth, val_cache))
                row["time"] = time.perf_counter() - t0
                history.append(row)
                best = self._keep_best(model, row, best)
                if cfg.eval_fgnet and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                    row.update(self._eval_fgnet(model, epoch + 1))
                write_metrics_csv(self.run_dir / "metrics.csv", history)
                self.tb.log(row)
                log.info(_epoch_line(row, cfg.epochs))
            rngs = ddp.all_gather_objects(self.dist, rng_state())
            if self._main():
                save_checkpoint(ckpt_path, {
                    "config_hash": cfg.config_hash(), "epoch": epoch + 1, "step": step,
                    "backbone": model.state_dict(),
                    "head": head.state_dict(), "extra": net.extra.state_dict(), "hooks": hooks.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs,
                    "data_order": {"seed": cfg.seed, "next_epoch": epoch + 1}, "history": history, "best": best})
            ddp.barrier(self.dist)

        completed = end_epoch >= cfg.epochs
        result = FinetuneResult(self.run_dir, None, None, history, (best or {}).get("epoch"), completed,
                                cfg.config_hash(), None, end_epoch)
        if self._main():
            best_path = self.run_dir / "best" / "backbone.pth"
            result.best_path = best_path if best_path.is_file() else None
            if completed:
                self._finish(model, result)
        ddp.barrier(self.dist)
        return result

    # -- pieces of execute --
    def _bar(self, total: int, desc: str):
        if self._main():
            return bar(total, desc, unit="step")
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=True)

    def _cache(self, model: nn.Module, depth: int, crops: np.ndarray, name: str) -> FeatureCache:
        from agebias.models.preprocess import to_tensor

        with torch.no_grad():
            shape = tuple(run_stages(model, to_tensor(crops[:1]).to(self.device), 0, depth).shape[1:])
        cache = build_cache(lambda x: run_stages(model, x, 0, depth), lambda idx: to_tensor(crops[idx]),
                            len(crops), sample_shape=shape, dtype=self.config.cache_dtype, mode=self.config.cache,
                            folder=Path(self.config.cache_dir) if self.config.cache_dir else self.run_dir / "cache",
                            name=f"{name}-r{self.dist.rank}", device=self.device, autocast=self.autocast,
                            desc=f"caching frozen layers ({name})")
        self.caches.append(cache)
        return cache

    def _batches(self, hooks: TrainingHooks, epoch: int, weights: list[float]) -> list[np.ndarray]:
        cfg, d = self.config, self.dist
        custom = hooks.make_batches(epoch, np.random.default_rng([cfg.seed, epoch, 11]), cfg.batch_size)
        if custom is None:
            order = epoch_order(self.data.train.source_index, weights, cfg.seed, epoch)
            return epoch_batches(order, cfg.batch_size, d.rank, d.world_size)
        custom = [np.asarray(b, dtype=np.int64) for b in custom if len(b) >= 2]
        n = (len(custom) // d.world_size) * d.world_size
        return custom[:n][d.rank::d.world_size]

    def _inputs(self, model: nn.Module, depth: int, idx: np.ndarray, cache: FeatureCache | None,
                gen: torch.Generator) -> torch.Tensor:
        if cache is not None:
            return cache.get(idx, self.device)
        from agebias.models.preprocess import to_tensor

        x = to_tensor(self.data.train.crops[idx])
        if self.config.augment == "flip":
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
        x = x.to(self.device)
        if depth == 0:
            return x
        with torch.no_grad(), (self.autocast() if self.autocast else nullcontext()):
            return run_stages(model, x, 0, depth).float()

    def _embed_val(self, model: nn.Module, depth: int, cache: FeatureCache | None) -> np.ndarray:
        from agebias.models.preprocess import to_tensor

        val = self.data.val
        was = model.training
        model.eval()
        out = []
        with torch.no_grad(), (self.autocast() if self.autocast else nullcontext()):
            for start in range(0, len(val), 64):
                idx = np.arange(start, min(len(val), start + 64))
                if cache is not None:
                    fmap = run_stages(model, cache.get(idx, self.device), depth)
                    emb = model.forward_head(fmap)
                else:
                    emb = model(to_tensor(val.crops[idx]).to(self.device))
                out.append(emb.float().cpu().numpy())
        model.train(was)
        return np.concatenate(out)

    def _validate(self, model: nn.Module, depth: int, cache: FeatureCache | None) -> dict[str, Any]:
        if len(self.data.val) == 0:
            return {"val_eer": math.nan, "val_fnmr_at_fmr_1e-3": math.nan}
        emb = self._embed_val(model, depth, cache)
        gen, imp = pair_scores(emb, self.data.val.subjects, self.config.max_val_impostors, self.config.seed)
        res = verification_metrics(gen, imp)
        self.metrics_source = res.source
        return res.as_dict()

    def _keep_best(self, model: nn.Module, row: dict[str, Any], best: dict | None) -> dict | None:
        eer, fnmr = row.get("val_eer"), row.get("val_fnmr_at_fmr_1e-3")
        if eer is None or not math.isfinite(eer):
            return best
        key = (eer, fnmr if fnmr is not None and math.isfinite(fnmr) else 1.0)
        if best is not None and tuple(best["key"]) < key:  # ties go to the later (further trained) epoch
            return best
        _save_backbone(model, self.run_dir / "best" / "backbone.pth")
        best = {"epoch": row["epoch"], "key": list(key), "val_eer": eer, "val_fnmr_at_fmr_1e-3": fnmr}
        write_json(self.run_dir / "best" / "epoch.json", best)
        return best

    def _eval_fgnet(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        from agebias.finetune.fgnet_eval import FgnetEvaluator

        if getattr(self, "fgnet", None) is None:
            self.fgnet = FgnetEvaluator(self.config.eval_fgnet, self.config.align_cache)
        try:
            return self.fgnet(model, self.run_dir / "fgnet" / f"epoch_{epoch:03d}", self.device)
        except UserError as err:  # a bad FG-NET folder must not end the training run
            log.info(f"finetune: --eval-fgnet failed at epoch {epoch}: {err}")
            return {"fgnet_note": str(err)}

    def _write_config(self, data: TrainingData, fsum, depth: int, model: nn.Module, hooks: TrainingHooks,
                      start_epoch: int) -> None:
        cfg = self.config
        payload = {
            "kind": RUN_KIND,
            "config_hash": cfg.config_hash(),
            "config": cfg.to_dict(),
            "data": data.summary,
            "model": {
                "arch": _arch_name(model, cfg),
                "frozen_parts": list(fsum.parts),
                "frozen_prefix_stages": depth,
                "trainable_params": fsum.trainable_params,
                "frozen_params": fsum.frozen_params,
                "num_classes": len(data.class_names),
                "head": cfg.head, "head_kwargs": cfg.head_kwargs(),
            },
            "mitigation": hooks.describe(),
            "world_size": self.dist.world_size,
            "torch": torch.__version__,
            "started_epoch": start_epoch,
        }
        write_json(self.run_dir / "config.json", payload)
        write_json(self.run_dir / "classes.json", data.class_names)
        if data.problems:
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["path", "reason"])
            for p in data.problems:
                w.writerow([p.path, p.reason])
            write_text(self.run_dir / "skipped.csv", buf.getvalue())

    def _finish(self, model: nn.Module, result: FinetuneResult) -> None:
        cfg = self.config
        final = self.run_dir / "backbone.pth"
        _save_backbone(model, final)
        result.backbone_path = final
        if cfg.onnx:
            from agebias.finetune.export import export_onnx

            result.onnx_path = export_onnx(model, self.run_dir / "model.onnx")
        cache_dir = self.run_dir / "cache"
        if cache_dir.is_dir() and not cfg.cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)
        write_json(self.run_dir / "done.json", {
            "config_hash": cfg.config_hash(), "epochs": result.epochs_done, "best_epoch": result.best_epoch,
            "backbone": "backbone.pth", "best": "best/backbone.pth" if result.best_path else None,
            "onnx": "model.onnx" if result.onnx_path else None, "history": result.history,
            "validation_metrics": getattr(self, "metrics_source", None)})


def _save_backbone(model: nn.Module, path: Path) -> None:
    """arcface_torch layout via agebias.models.checkpoints.save_backbone."""
    from agebias.models.checkpoints import save_backbone

    save_backbone(model, path)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    def f(v) -> str:
        return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"

    return (f"epoch {row['epoch']}/{epochs}: loss {f(row['loss'])}, lr {row['lr']:.3g}, val EER {f(row.get('val_eer'))},"
            f" FNMR@FMR1e-3 {f(row.get('val_fnmr_at_fmr_1e-3'))}, {row.get('time', 0):.1f} s")
