"""`agebias generate`: age-varied identities in the layout ``<out>/<id>/<id>_<age>.png`` + ``manifest.csv``."""

from __future__ import annotations

import logging
from typing import Optional

import typer

from agebias.cli.interrupt import on_interrupt
from agebias.cli.messages import report_skipped
from agebias.cli.options import with_settings
from agebias.errors import SettingsError
from generators.settings import GenerateSettings

log = logging.getLogger(__name__)

_HELP = """Generate age-varied identities with a generator (cardioid, eg3d, cusp, diffusion, or an entry point).

Examples:

  agebias generate --method cardioid --sources photos/ --ages 3,8,14 --out gen/

  agebias generate --method eg3d --identities 1400 --age-intervals 0-5,5-10,10-15,15-20,20-30,30-40,40-50,50-70
  --checkpoint net.pkl --trust-checkpoint --out gen/

Reruns skip valid outputs; an interrupted run resumes where it stopped.
"""


def register(app: typer.Typer) -> None:
    @app.command("generate", help=_HELP)
    @with_settings(settings=GenerateSettings)
    def generate(
        settings: GenerateSettings,
        age_bins: Optional[str] = typer.Option(None, "--age-bins", hidden=True),
        per_bin: Optional[int] = typer.Option(None, "--per-bin", hidden=True),
    ) -> int:
        from agebias.api import generate as run

        if age_bins is not None or per_bin is not None:
            raise SettingsError("generate takes --age-intervals (half-open sampling intervals such as 0-5,5-10) "
                                "and --per-interval; --age-bins names the inclusive age groups of evaluation")
        on_interrupt(f"the images finished so far are kept in {settings.out} (listed in its manifest.csv)")
        result = run(settings)
        log.info(f"{result.written} written, {result.reused} kept, {len(result.skipped)} skipped -> {result.out}")
        if result.qc is not None:
            log.info(f"QC: {result.qc.summary['verdict']}")
            log.info(f"QC: {result.qc.rejected} of {result.qc.checked} rejected -> {result.qc.csv}")
        return report_skipped(result.skipped, f"{result.out / 'generation.json'} (skipped)")
