"""`agebias finetune`: fine-tune a backbone with frozen layers, a margin head and optional bias mitigation."""

from __future__ import annotations

import logging
from typing import Optional

import typer

log = logging.getLogger(__name__)


def _mitigation_help() -> str:
    try:
        from agebias.mitigation.registry import describe_mitigations

        return "Bias mitigation NAME[:key=value,...] using the age groups of --age-bins:\n\n" + \
            describe_mitigations().replace("\n", "\n\n")
    except ImportError:
        return "Bias mitigation NAME[:key=value,...] (see agebias.finetune.hooks)."


def register(app: typer.Typer) -> None:
    @app.command("finetune", help=(
        "Fine-tune a face-recognition backbone on aligned faces (e.g. a generated <id>/<id>_<age>.png set).\n\n"
        "Freezing 1-4 means layer1..layer4 (layer1 takes the stem with it); frozen parts keep their BatchNorm "
        "statistics, and a frozen prefix is computed once and cached. Validation holds out whole identities. "
        "Works under `torchrun --nproc_per_node N -m agebias finetune ...` (DDP)."))
    def finetune(
        data: list[str] = typer.Option(..., "--data", help="Training source(s) PATH[:WEIGHT] (generated layout dir "
                                       "or manifest CSV); repeat or comma-separate to mix; WEIGHT = share per epoch"),
        backbone: str = typer.Option(..., "--backbone", help="Weights (.pth, .safetensors, iresnet .onnx), or an "
                                     "architecture name (iresnet50, iresnet:1,1,1,1@16,32,64,128) with --init random"),
        out: str = typer.Option(..., "--out", help="Run directory (resumable; refuses a run with other settings)"),
        arch: Optional[str] = typer.Option(None, "--arch", help="Architecture of --backbone (checked), e.g. iresnet50"),
        init: str = typer.Option("pretrained", "--init", help="pretrained (load --backbone) | random"),
        from_scratch: bool = typer.Option(False, "--from-scratch", help="Same as --init random"),
        aligned: bool = typer.Option(False, "--aligned", help="Images are 112x112 aligned crops already"),
        detector: str = typer.Option("auto", "--detector", help="Face detector for unaligned images: auto|mtcnn|landmarks"),
        frozen_layers: str = typer.Option("1,2,3", "--frozen-layers", help="Frozen parts: 1-4 and/or stem; 'none'"),
        head: str = typer.Option("arcface", "--head", help="arcface | cosface | combined"),
        scale: float = typer.Option(64.0, "--scale", help="Logit scale s"),
        margin: Optional[str] = typer.Option(None, "--margin", help="Margin (arcface 0.5 rad, cosface 0.35); "
                                             "combined: m1,m2,m3"),
        focal_gamma: float = typer.Option(0.0, "--focal-gamma", help="Focal loss gamma (0 = cross-entropy)"),
        optimizer: str = typer.Option("sgd", "--optimizer", help="sgd | adamw"),
        lr: float = typer.Option(0.01, "--lr"),
        momentum: float = typer.Option(0.9, "--momentum"),
        weight_decay: float = typer.Option(5e-4, "--weight-decay"),
        scheduler: str = typer.Option("none", "--scheduler", help="none | cosine | step (per step, after warm-up)"),
        warmup_epochs: float = typer.Option(0.0, "--warmup-epochs"),
        step_epochs: str = typer.Option("", "--step-epochs", help="Milestones of --scheduler step, e.g. 10,15"),
        epochs: int = typer.Option(10, "--epochs"),
        batch_size: int = typer.Option(25, "--batch-size", help="Per process"),
        val_fraction: float = typer.Option(0.2, "--val-fraction", help="Fraction of identities held out"),
        seed: int = typer.Option(0, "--seed"),
        augment: str = typer.Option("none", "--augment", help="none | flip (flip disables the prefix cache)"),
        age_bins: Optional[str] = typer.Option(None, "--age-bins", help="Age groups for mitigation and logs: inclusive "
                                               "ranges 0-12,13-19,20-39,40-69 (the default), 70+ for an open end"),
        mitigation: Optional[str] = typer.Option(None, "--mitigation", help=_mitigation_help()),
        resume: bool = typer.Option(False, "--resume", help="Continue an unfinished run in --out"),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (fp16 on CUDA only)"),
        cache: str = typer.Option("auto", "--cache", help="Frozen-prefix cache: auto | ram | disk | off"),
        cache_dtype: str = typer.Option("fp32", "--cache-dtype", help="fp32 (exact) | fp16 (half the memory)"),
        onnx: bool = typer.Option(False, "--onnx", help="Also export model.onnx"),
        eval_fgnet: Optional[str] = typer.Option(None, "--eval-fgnet", help="FG-NET root to evaluate during training"),
        eval_every: int = typer.Option(1, "--eval-every", help="Epochs between FG-NET evaluations"),
        trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow pickled modules in --backbone"),
    ) -> int:
        from agebias.finetune.config import DEFAULT_AGE_BINS, FinetuneConfig
        from agebias.finetune.trainer import run_finetune

        sources = [s.strip() for item in data for s in item.split(",") if s.strip()]
        config = FinetuneConfig(
            data=sources, backbone=backbone, out=out, arch=arch, init="random" if from_scratch else init,
            aligned=aligned, detector=detector, frozen_layers=frozen_layers, head=head, scale=scale, margin=margin,
            focal_gamma=focal_gamma, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
            scheduler=scheduler, warmup_epochs=warmup_epochs, step_epochs=step_epochs, epochs=epochs,
            batch_size=batch_size, val_fraction=val_fraction, seed=seed, augment=augment,
            age_bins=age_bins or DEFAULT_AGE_BINS, mitigation=mitigation, resume=resume, device=device,
            precision=precision, cache=cache, cache_dtype=cache_dtype, onnx=onnx, eval_fgnet=eval_fgnet,
            eval_every=eval_every, trust_checkpoint=trust_checkpoint)
        try:
            result = run_finetune(config)
        except KeyboardInterrupt:
            log.info(f"finetune: interrupted; completed epochs are checkpointed in {out}: add --resume to the same "
                 f"command to continue")
            raise
        if result.completed and result.backbone_path is not None:
            log.info(f"finetune: wrote {result.backbone_path}" + (f" (best epoch {result.best_epoch}: "
                                                              f"{result.best_path})" if result.best_path else ""))
        skipped = (result.run_dir / "skipped.csv").is_file()
        return 1 if skipped else 0
