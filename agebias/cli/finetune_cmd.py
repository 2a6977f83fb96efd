"""`agebias finetune`: fine-tune a backbone with frozen layers, a margin head and optional bias mitigation."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from typer.core import TyperCommand

from agebias.cli.interrupt import on_interrupt
from agebias.cli.messages import read_skipped_csv, report_skipped
from agebias.cli.options import with_settings
from agebias.finetune.config import FinetuneConfig

log = logging.getLogger(__name__)

_HELP = (
    "Fine-tune a face-recognition backbone on aligned faces (e.g. a generated <id>/<id>_<age>.png set).\n\n"
    "Freezing 1-4 means the stages layer1..layer4 of an iresnet or sface backbone (layer1 takes the stem with it); "
    "frozen parts keep their BatchNorm "
    "statistics, and a frozen prefix is computed once and cached. Validation holds out whole identities. "
    "Works under `torchrun --nproc_per_node N -m agebias finetune ...` (DDP).\n\n"
    "Bias mitigation methods (--mitigation NAME[:key=value,...]):\n\n")


class _FinetuneCommand(TyperCommand):
    """Lists the mitigation methods in --help, read from their registry only when help is shown (importing the
    methods imports torch, which every other use of the command line would pay for)."""

    def format_help(self, ctx, formatter) -> None:
        from agebias.mitigation.registry import describe_mitigations

        self.help = _HELP + describe_mitigations().replace("\n", "\n\n")
        super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    @app.command("finetune", cls=_FinetuneCommand, help=_HELP + "(see agebias finetune --help)")
    @with_settings(config=FinetuneConfig)
    def finetune(config: FinetuneConfig) -> int:
        from agebias.api import finetune as run

        on_interrupt(f"completed epochs are checkpointed in {Path(config.out) / 'checkpoints'}", add=("--resume",))
        result = run(config)
        if result.completed and result.backbone_path is not None:
            log.info(f"finetune: wrote {result.backbone_path}" + (
                f" (best epoch {result.best_epoch}: {result.best_path})" if result.best_path else ""))
        skipped = result.run_dir / "skipped.csv"
        return report_skipped(read_skipped_csv(skipped), str(skipped))
