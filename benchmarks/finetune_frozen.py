"""Frozen-layer fine-tuning speed: the MSc_FR_Bias-style loop against ours, iresnet50 at 112x112, frozen 1,2,3.

Baseline (as in the MSc_FR_Bias pipeline): frozen parts only get ``requires_grad=False``; the whole model stays in
train mode (frozen BatchNorm statistics drift) and every step runs the full network forward, in fp32.
Ours (agebias.finetune): frozen parts in eval mode; the frozen prefix (stem + layer1..3) runs once, without
autograd and on channels-last images on CPU, into a cache (counted in epoch 1); each step trains layer4 +
bn2/fc/features from the cache, with the trainer's optimizer (fused SGD where torch has it; the baseline keeps the
pipeline's plain SGD).
With ``--precision bf16`` ours also runs as ``agebias finetune --precision bf16`` does: bf16 autocast, fp32 master
weights, channels-last, layer 4's weight gradients as one bf16 matrix product each
(:mod:`agebias.finetune.gemm_weight_grad`; ``AGEBIAS_NO_GEMM_GRAD=1`` for oneDNN's), the trainable conv/linear
weights kept in bf16 between steps and updated with their masters in one compiled SGD (or AdamW) pass
(:mod:`agebias.finetune.bf16_weights`, with numba; ``AGEBIAS_NO_BF16_WEIGHTS=1`` for autocast's casts), layer 4's
PReLU backward in one compiled pass (:mod:`agebias.finetune.bf16_prelu`; ``AGEBIAS_NO_BF16_PRELU=1`` for torch's),
the cache kept as ``--cache-dtype`` (fp32: the bf16 prefix outputs exactly; bf16: the same values in half the
memory); the fp32 and bf16 runs start from the same weights and see the same batches, and their loss curves are
printed side by side (per epoch: the mean step loss of each, and the largest relative difference of a step's loss,
|bf16 - fp32| / |fp32|).
Both use the same random images, the same ArcFace head, SGD (lr 0.01, momentum 0.9), batch 25; ``--optimizer
adamw`` trains ours with AdamW (lr 1e-3) instead, as ``agebias finetune --optimizer adamw`` does (the baseline keeps
the pipeline's SGD).

With ``--precision bf16`` on CPU, one fixed bf16 and fp32 matrix product is also timed after every epoch: a shared
machine's bf16 (AMX) speed drifts by 2x and more, and the bf16 ratio drifts with it. After the timed epochs each run
trains one more epoch under torch's ``FlopCounterMode`` to count its matrix work (convolutions and matrix products,
forward and backward); ``bf16_floor_ratio`` is the bf16 run's count at the probe's bf16 speed over the baseline's
epoch time: the ratio a bf16 step would reach if its matrix work ran as fast as the probe and nothing else took time.
Targets: from epoch 2 on, ours <= 0.25x the baseline's epoch time in fp32 and <= 0.10x in bf16 (on a CPU with native
bf16: AMX or AVX512-BF16; see ``agebias doctor``); epoch 1 no slower than the baseline. Baseline and ours alternate
epoch by epoch (a shared machine's load then hits both alike); wall-clock and process CPU seconds are printed per
epoch, with the ratios. Run: ``.venv/bin/python benchmarks/finetune_frozen.py`` (``--images 100 --epochs 2
--batch-size 25 --arch iresnet50 --device cpu --precision fp32``); a few minutes on 2 CPU cores. ``--precision bf16
--epochs 4`` adds the bf16 run and its loss curve; ``--compare-weight-grad`` adds bf16 with oneDNN's weight
gradients (``bf16-onednn``), interleaved too, for an A/B of :mod:`agebias.finetune.gemm_weight_grad`;
``--compare-bf16-weights`` adds bf16 with autocast's per-step casts and torch's fused SGD (``bf16-cast``) for an A/B
of :mod:`agebias.finetune.bf16_weights`; ``--compare-prelu`` adds bf16 with torch's PReLU backward
(``bf16-prelu-torch``) for an A/B of :mod:`agebias.finetune.bf16_prelu`. In both precisions the first trainable
block takes its bn1 gradients from conv1's weight gradient instead of conv1's input gradient
(:mod:`agebias.finetune.input_bn_fold`); ``--compare-bn-fold`` adds ``fp32-nofold`` (and ``bf16-nofold``) with
autograd's path, for an A/B of it.
"""

from __future__ import annotations

import argparse
import functools
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from agebias.finetune import bf16_prelu, bf16_weights, gemm_weight_grad, input_bn_fold
from agebias.finetune.cache import build_cache
from agebias.finetune.freeze import freeze, parse_frozen_layers, run_stages, set_train_mode
from agebias.finetune.hooks import TrainingHooks
from agebias.finetune.config import FinetuneConfig
from agebias.finetune.trainer import TrainNet, autocast_factory, make_optimizer
from agebias.models.heads import create_head, margin_loss
from agebias.models.preprocess import to_tensor
from agebias.models.registry import create_backbone
from agebias.precision import channels_last, cpu_bf16_flags, prefix_channels_last


BF16_COMPARISONS = (  # --compare-FLAG: an extra bf16 run NAME, built with Ours(..., SWITCHED_OFF=False)
    ("weight-grad", "bf16-onednn", "gemm_grad", "oneDNN's weight gradients"),
    ("bf16-weights", "bf16-cast", "bf16_copies", "autocast's weight casts and torch's SGD"),
    ("prelu", "bf16-prelu-torch", "prelu_kernel", "torch's PReLU backward"),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pretrained_stand_in(arch: str, crops: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    """Random weights with BatchNorm statistics calibrated on the data (as a trained model would have them):
    a random iresnet50's eval-mode BatchNorms do not normalise, so its frozen layers would overflow."""
    torch.manual_seed(0)
    model = create_backbone(arch).to(device)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for start in range(0, min(len(crops), 50), 25):
            model(to_tensor(crops[start:start + 25]).to(device))
    for bn in bns:
        bn.momentum = 0.1
    return {k: v.clone() for k, v in model.state_dict().items()}


class Baseline:
    """MSc_FR_Bias style: requires_grad=False only, whole model in train mode, full forward every step."""

    def __init__(self, arch, n_classes, device, state):
        self.model = create_backbone(arch).to(device)
        self.model.load_state_dict(state)
        torch.manual_seed(1)
        for part in ("conv1", "bn1", "prelu", "layer1", "layer2", "layer3"):
            for p in getattr(self.model, part).parameters():
                p.requires_grad_(False)
        self.model.features.weight.requires_grad_(True)  # the MSc_FR_Bias pipeline unfroze it
        self.head = create_head("arcface", 512, n_classes).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.device = device

    def epoch(self, crops, labels, order, batch) -> float:
        self.model.train()
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = to_tensor(crops[idx]).to(self.device)
            y = torch.from_numpy(labels[idx]).to(self.device)
            loss = margin_loss(self.head(self.model(x), y), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


class Ours:
    """agebias.finetune: frozen parts in eval mode, frozen prefix cached once, trainable tail only; ``precision``
    bf16: autocast, channels-last, fp32 master weights (as the trainer runs it)."""

    def __init__(self, arch, n_classes, device, state, precision: str = "fp32", cache_dtype: str = "fp32",
                 gemm_grad: bool = True, bf16_copies: bool = True, prelu_kernel: bool = True,
                 bn_fold: bool = True, optimizer: str = "sgd"):
        self.model = create_backbone(arch).to(device)
        self.model.load_state_dict(state)
        torch.manual_seed(1)
        self.parts = parse_frozen_layers("1,2,3")
        self.depth = freeze(self.model, self.parts).prefix_depth
        head = create_head("arcface", 512, n_classes).to(device)
        self.net = TrainNet(self.model, head, TrainingHooks(), self.depth, 0.0, channels_last(precision)).to(device)
        if gemm_grad:  # as the trainer does
            gemm_weight_grad.enable_for(self.net, precision, device)
        if prelu_kernel:
            bf16_prelu.enable_for(self.net, precision, device)
        if bn_fold:
            input_bn_fold.enable_for(self.net, device)
        config = FinetuneConfig(data=["-"], backbone=arch, out="-", optimizer=optimizer,
                                lr=0.01 if optimizer == "sgd" else 1e-3, momentum=0.9, weight_decay=5e-4)
        self.opt = make_optimizer(config, [p for p in self.net.parameters() if p.requires_grad])
        self.bf16_weights = bf16_weights.enable_for(self.model, self.opt, precision, device) if bf16_copies else None
        self.autocast = autocast_factory(precision, device)
        self.cache_dtype = cache_dtype
        self.prefix_channels_last = prefix_channels_last(precision, device)  # as the trainer lays out the images
        self.cache = None
        self.gen = torch.Generator().manual_seed(0)
        self.device = device

    def epoch(self, crops, labels, order, batch) -> list[float]:
        """One epoch; returns the loss of every step."""
        self.net.train()
        set_train_mode(self.model, self.parts)
        model, depth = self.model, self.depth
        if self.cache is None:  # epoch 1 pays for the cache
            with torch.no_grad():
                shape = tuple(run_stages(model, to_tensor(crops[:1]).to(self.device), 0, depth).shape[1:])
            layout = torch.channels_last if self.prefix_channels_last else torch.contiguous_format
            self.cache = build_cache(lambda x: run_stages(model, x, 0, depth),
                                     lambda idx: to_tensor(crops[idx]).contiguous(memory_format=layout),
                                     len(crops), sample_shape=shape, device=self.device, batch_size=batch,
                                     mode="ram", dtype=self.cache_dtype, autocast=self.autocast)
        losses = []
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = self.cache.get(idx, self.device)
            y = torch.from_numpy(labels[idx]).to(self.device)
            with self.autocast() if self.autocast else nullcontext():
                loss, _, _ = self.net(x, y, y, torch.zeros_like(y), 0, 0, self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.bf16_weights is not None:  # as the trainer steps: the bf16-kept weights first
                self.bf16_weights.step(self.opt)
            self.opt.step()
            losses.append(float(loss.detach()))
        return losses


PROBE = (1225, 4608, 512)  # (M, K, N) of the machine-speed probe: layer 4's weight-gradient product at batch 25


def matmul_tflops(dtype: torch.dtype, repeats: int = 3) -> float:
    """TFLOPS of one fixed matrix product on the CPU (:data:`PROBE`), the best of ``repeats``: how fast the machine
    runs ``dtype`` right now (a shared machine's bf16 speed drifts)."""
    m, k, n = PROBE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e12


def epoch_gflop(run, crops, labels, order, batch) -> float:
    """GFLOP of one epoch's convolutions and matrix products (forward and backward, as torch's ``FlopCounterMode``
    counts them) of ``run``, cache built: trains ``run`` one more epoch, so call it after the timed ones."""
    with FlopCounterMode(display=False) as counter:
        run.epoch(crops, labels, order, batch)
    return counter.get_total_flops() / 1e9


def timed(fn, device) -> tuple[float, float, float]:
    """(wall s, process CPU s, result)."""
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _sync(device)
    return time.perf_counter() - w0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="iresnet50")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--identities", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: also run ours in bf16 (autocast + channels-last) beside fp32")
    ap.add_argument("--cache-dtype", default="fp32", choices=("fp32", "bf16"), help="the bf16 run's cache")
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"),
                    help="ours: SGD (lr 0.01, momentum 0.9) or AdamW (lr 1e-3); the baseline keeps SGD")
    for flag, name, _, what in BF16_COMPARISONS:
        ap.add_argument(f"--compare-{flag}", action="store_true",
                        help=f"with --precision bf16: also run bf16 with {what} ({name}), interleaved with the others")
    ap.add_argument("--compare-bn-fold", action="store_true",
                    help="also run ours with autograd's gradient for the first trainable block's bn1 (fp32-nofold, "
                         "and bf16-nofold with --precision bf16), interleaved with the others")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    asked = [flag for flag, *_ in BF16_COMPARISONS if getattr(args, "compare_" + flag.replace("-", "_"))]
    if asked and args.precision != "bf16":
        ap.error(f"--compare-{asked[0]} compares bf16 runs: add --precision bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (args.images, 112, 112, 3), dtype=np.uint8)
    labels = (np.arange(args.images) % args.identities).astype(np.int64)
    flags = cpu_bf16_flags() if device.type == "cpu" else []
    print(f"{args.arch}, {args.images} images 112x112, batch {args.batch_size}, frozen stem+layer1..3, "
          f"ours with {args.optimizer}, "
          f"device {device}, torch threads {torch.get_num_threads()}"
          + (f", CPU bf16: {', '.join(flags) or 'none (emulated)'}" if device.type == "cpu" else ""), flush=True)
    state = pretrained_stand_in(args.arch, crops, device)
    make_ours = functools.partial(Ours, args.arch, args.identities, device, state, optimizer=args.optimizer)
    runs = {"baseline": Baseline(args.arch, args.identities, device, state), "fp32": make_ours()}
    if args.compare_bn_fold:
        runs["fp32-nofold"] = make_ours(bn_fold=False)
    if args.precision == "bf16":
        runs["bf16"] = make_ours("bf16", args.cache_dtype)
        for flag, name, switched_off, _ in BF16_COMPARISONS:
            if flag in asked:
                runs[name] = make_ours("bf16", args.cache_dtype, **{switched_off: False})
        if args.compare_bn_fold:
            runs["bf16-nofold"] = make_ours("bf16", args.cache_dtype, bn_fold=False)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    losses: dict[str, list[list[float]]] = {k: [] for k in runs}
    probe = args.precision == "bf16" and device.type == "cpu"  # the machine's matmul speed, after every epoch
    speed: list[tuple[float, float]] = []
    for epoch in range(args.epochs):  # interleaved, so that load changes on a shared machine hit both alike
        order = np.random.default_rng(epoch).permutation(args.images)
        for name, run in runs.items():
            wall, cpu, out = timed(lambda run=run, order=order: run.epoch(crops, labels, order, args.batch_size),
                                   device)
            steps = out if isinstance(out, list) else [out]
            times[name].append((wall, cpu))
            losses[name].append(steps)
            print(f"{name:11s} epoch {epoch + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU (loss {np.mean(steps):.3f})",
                  flush=True)
        if probe:
            speed.append((matmul_tflops(torch.bfloat16), matmul_tflops(torch.float32)))
    ours = [k for k in runs if k != "baseline"]
    order = np.random.default_rng(args.epochs).permutation(args.images)
    gflop = {name: epoch_gflop(run, crops, labels, order, args.batch_size) for name, run in runs.items()}
    print("matrix work per epoch after the first (convolutions and matrix products, forward and backward): "
          + ", ".join(f"{name} {g:.1f} GFLOP" for name, g in gflop.items()))
    print("epoch  baseline_wall_s  " + "  ".join(f"{k}_wall_s  ratio_{k}_wall  ratio_{k}_cpu" for k in ours)
          + ("  bf16_mm_tflops  fp32_mm_tflops  bf16_floor_ratio" if probe else ""))
    floor = []  # bf16's matrix work at the probe's bf16 speed, over the baseline's epoch time
    for e in range(args.epochs):
        bw, bc = times["baseline"][e]
        if probe:
            floor.append(gflop["bf16"] / (speed[e][0] * 1e3) / bw)
        print(f"{e + 1:5d}  {bw:15.2f}  " + "  ".join(
            f"{times[k][e][0]:{len(k) + 7}.2f}  {times[k][e][0] / bw:{len(k) + 11}.3f}  "
            f"{times[k][e][1] / max(bc, 1e-9):{len(k) + 10}.3f}" for k in ours)
            + (f"  {speed[e][0]:14.2f}  {speed[e][1]:14.2f}  {floor[e]:16.3f}" if probe else ""))
    if probe:
        bf16_speed, fp32_speed = (np.array([s[i] for s in speed]) for i in (0, 1))
        m, k, n = PROBE
        print(f"machine: a fixed matrix product ({m}x{k} @ {k}x{n}) ran at {bf16_speed.min():.2f}-"
              f"{bf16_speed.max():.2f} TFLOPS in bf16 and {fp32_speed.min():.2f}-{fp32_speed.max():.2f} in fp32 "
              "across the epochs; bf16 epoch times move with the bf16 figure")
        if args.epochs >= 2:
            later = [times["baseline"][e][0] for e in range(1, args.epochs)]
            needed = gflop["bf16"] / (TARGETS["bf16"] * float(np.median(later))) / 1e3
            print(f"bf16 floor: the bf16 run's {gflop['bf16']:.1f} GFLOP of matrix work per epoch, done at the probe's "
                  f"bf16 speed, would take {min(floor[1:]):.3f}-{max(floor[1:]):.3f}x the baseline's epoch (epochs "
                  f"2+, median {np.median(floor[1:]):.3f}); the {TARGETS['bf16']} target needs the bf16 product at "
                  f">= {needed:.2f} TFLOPS even if nothing else took time (at the median baseline epoch)")
    for k in ours:
        first_wall = times[k][0][0] / times["baseline"][0][0]
        first_cpu = times[k][0][1] / max(times["baseline"][0][1], 1e-9)
        print(f"{k}: epoch 1: ours/baseline = {first_wall:.3f} wall, {first_cpu:.3f} CPU "
              f"(target <= 1: {'met' if max(first_wall, first_cpu) <= 1 else 'MISSED'})")
        if args.epochs < 2:
            print("run with --epochs >= 2 for the epoch-2+ ratio")
            continue
        wall = [times[k][e][0] / times["baseline"][e][0] for e in range(1, args.epochs)]
        cpu = [times[k][e][1] / max(times["baseline"][e][1], 1e-9) for e in range(1, args.epochs)]
        target = TARGETS[k]
        print(f"{k}: epochs 2+: ours/baseline median {np.median(wall):.3f} wall (worst {max(wall):.3f}), "
              f"median {np.median(cpu):.3f} CPU (worst {max(cpu):.3f}) "
              f"(target <= {target}: {'met' if np.median(wall) <= target else 'MISSED'} by median wall time)")
    if "bf16" in runs:
        print("loss curves, ours fp32 vs ours bf16 (mean step loss per epoch; max relative difference of a step's "
              "loss)")
        print("epoch  fp32_loss  bf16_loss  max_rel_diff")
        worst = 0.0
        for e in range(args.epochs):
            a, b = np.asarray(losses["fp32"][e]), np.asarray(losses["bf16"][e])
            rel = float(np.max(np.abs(b - a) / np.maximum(np.abs(a), 1e-12)))
            worst = max(worst, rel)
            print(f"{e + 1:5d}  {a.mean():9.4f}  {b.mean():9.4f}  {rel:12.4f}")
        print(f"largest relative difference of a step's loss over {args.epochs} epochs: {worst:.4f}")


TARGETS = {"fp32": 0.25, "fp32-nofold": 0.25, "bf16": 0.10, "bf16-nofold": 0.10,
           **{name: 0.10 for _, name, _, _ in BF16_COMPARISONS}}

if __name__ == "__main__":
    main()
