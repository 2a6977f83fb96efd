"""Frozen-layer fine-tuning speed: the MSc_FR_Bias-style loop against ours, iresnet50 at 112x112, frozen 1,2,3.

Baseline (as in the MSc_FR_Bias pipeline): frozen parts only get ``requires_grad=False``; the whole model stays in
train mode (frozen BatchNorm statistics drift) and every step runs the full network forward.
Ours (agebias.finetune): frozen parts in eval mode; the frozen prefix (stem + layer1..3) runs once, without
autograd, into an fp32 cache (counted in epoch 1); each step trains layer4 + bn2/fc/features from the cache, with
the trainer's optimizer (fused SGD where torch has it; the baseline keeps the pipeline's plain SGD).
Both use the same random images, the same ArcFace head, SGD (lr 0.01, momentum 0.9), batch 25.

Target: from epoch 2 on, ours <= 0.25x the baseline's epoch time; epoch 1 no slower than the baseline.
Baseline and ours alternate epoch by epoch (a shared machine's load then hits both alike); wall-clock and
process CPU seconds are printed per epoch, with the ratios. Run: ``.venv/bin/python benchmarks/finetune_frozen.py``
(``--images 100 --epochs 2 --batch-size 25 --arch iresnet50 --device cpu``); a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from agebias.finetune.cache import build_cache
from agebias.finetune.freeze import freeze, parse_frozen_layers, run_stages, set_train_mode
from agebias.finetune.hooks import TrainingHooks
from agebias.finetune.config import FinetuneConfig
from agebias.finetune.trainer import TrainNet, make_optimizer
from agebias.models.heads import create_head, margin_loss
from agebias.models.preprocess import to_tensor
from agebias.models.registry import create_backbone


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
    """agebias.finetune: frozen parts in eval mode, frozen prefix cached once (fp32), trainable tail only."""

    def __init__(self, arch, n_classes, device, state):
        self.model = create_backbone(arch).to(device)
        self.model.load_state_dict(state)
        torch.manual_seed(1)
        self.parts = parse_frozen_layers("1,2,3")
        self.depth = freeze(self.model, self.parts).prefix_depth
        head = create_head("arcface", 512, n_classes).to(device)
        self.net = TrainNet(self.model, head, TrainingHooks(), self.depth, 0.0).to(device)
        config = FinetuneConfig(data=["-"], backbone=arch, out="-", lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.opt = make_optimizer(config, [p for p in self.net.parameters() if p.requires_grad])
        self.cache = None
        self.gen = torch.Generator().manual_seed(0)
        self.device = device

    def epoch(self, crops, labels, order, batch) -> float:
        self.net.train()
        set_train_mode(self.model, self.parts)
        model, depth = self.model, self.depth
        if self.cache is None:  # epoch 1 pays for the cache
            with torch.no_grad():
                shape = tuple(run_stages(model, to_tensor(crops[:1]).to(self.device), 0, depth).shape[1:])
            self.cache = build_cache(lambda x: run_stages(model, x, 0, depth), lambda idx: to_tensor(crops[idx]),
                                     len(crops), sample_shape=shape, device=self.device, batch_size=batch,
                                     mode="ram")
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            x = self.cache.get(idx, self.device)
            y = torch.from_numpy(labels[idx]).to(self.device)
            loss, _, _ = self.net(x, y, y, torch.zeros_like(y), 0, 0, self.gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return float(loss.detach())


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
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (args.images, 112, 112, 3), dtype=np.uint8)
    labels = (np.arange(args.images) % args.identities).astype(np.int64)
    print(f"{args.arch}, {args.images} images 112x112, batch {args.batch_size}, frozen stem+layer1..3, "
          f"device {device}, torch threads {torch.get_num_threads()}", flush=True)
    state = pretrained_stand_in(args.arch, crops, device)
    baseline = Baseline(args.arch, args.identities, device, state)
    ours = Ours(args.arch, args.identities, device, state)
    rows = []
    for epoch in range(args.epochs):  # interleaved, so that load changes on a shared machine hit both alike
        order = np.random.default_rng(epoch).permutation(args.images)
        bw, bc, bl = timed(lambda: baseline.epoch(crops, labels, order, args.batch_size), device)
        print(f"baseline epoch {epoch + 1}: {bw:.2f} s wall, {bc:.2f} s CPU (loss {bl:.3f})", flush=True)
        ow, oc, ol = timed(lambda: ours.epoch(crops, labels, order, args.batch_size), device)
        print(f"ours     epoch {epoch + 1}: {ow:.2f} s wall, {oc:.2f} s CPU (loss {ol:.3f})", flush=True)
        rows.append((bw, bc, ow, oc))
    print("epoch  baseline_wall_s  ours_wall_s  ratio_wall  baseline_cpu_s  ours_cpu_s  ratio_cpu")
    for e, (bw, bc, ow, oc) in enumerate(rows, start=1):
        print(f"{e:5d}  {bw:15.2f}  {ow:11.2f}  {ow / bw:10.3f}  {bc:14.2f}  {oc:10.2f}  {oc / max(bc, 1e-9):9.3f}")
    first_wall, first_cpu = rows[0][2] / rows[0][0], rows[0][3] / max(rows[0][1], 1e-9)
    print(f"epoch 1: ours/baseline = {first_wall:.3f} wall, {first_cpu:.3f} CPU "
          f"(target <= 1: {'met' if max(first_wall, first_cpu) <= 1 else 'MISSED'})")
    if len(rows) > 1:
        wall = [ow / bw for bw, _, ow, _ in rows[1:]]
        cpu = [oc / max(bc, 1e-9) for _, bc, _, oc in rows[1:]]
        print(f"epochs 2+: ours/baseline median {np.median(wall):.3f} wall (worst {max(wall):.3f}), "
              f"median {np.median(cpu):.3f} CPU (worst {max(cpu):.3f}) "
              f"(target <= 0.25: {'met' if np.median(wall) <= 0.25 else 'MISSED'} by median wall time)")
    else:
        print("run with --epochs >= 2 for the epoch-2+ ratio")

if __name__ == "__main__":
    main()
