"""`agebias generate`: age-varied identities in the layout ``<out>/<id>/<id>_<age>.png`` + ``manifest.csv``."""

from __future__ import annotations

import logging
import json
from pathlib import Path
from typing import Optional

import typer

from agebias.errors import UserError

log = logging.getLogger(__name__)

_HELP = """Generate age-varied identities with a generator (cardioid, eg3d, cusp, diffusion, or an entry point).

Examples:

  agebias generate --method cardioid --sources photos/ --ages 3,8,14 --out gen/

  agebias generate --method eg3d --identities 1400 --age-bins 0-5,5-10,10-15,15-20,20-30,30-40,40-50,50-70
  --checkpoint net.pkl --trust-checkpoint --out gen/

Reruns skip valid outputs; an interrupted run resumes where it stopped.
"""


def _parse_option(values: list[str]) -> dict:
    out = {}
    for item in values:
        if "=" not in item:
            raise UserError(f"--option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def register(app: typer.Typer) -> None:
    @app.command("generate", help=_HELP)
    def generate(
        method: str = typer.Option("cardioid", "--method", "-m", help="Generator name (agebias doctor lists them)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (<out>/<id>/<id>_<age>.png)."),
        identities: Optional[int] = typer.Option(None, "--identities", "-n", help="Number of seed identities."),
        sources: Optional[Path] = typer.Option(None, "--sources", help="Folder of source photos (one identity each)."),
        aligned: bool = typer.Option(False, "--aligned", help="Sources are already aligned 112x112 crops."),
        all_faces: bool = typer.Option(False, "--all-faces", help="Every face of a group photo is an identity."),
        ages: Optional[str] = typer.Option(None, "--ages", help="Target ages, e.g. 5,10,15."),
        age_bins: Optional[str] = typer.Option(None, "--age-bins", help="Age bins, e.g. 0-5,5-10 (random ages)."),
        per_bin: int = typer.Option(1, "--per-bin", help="Random ages per bin and identity."),
        seed: int = typer.Option(0, "--seed", help="First seed; also seeds the age draws."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size",
                                                 help="Images per forward pass (default: the generator's)."),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 (default: cuda if present)."),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Network pickle / model path or hub id."),
        repo: Optional[Path] = typer.Option(None, "--repo", help="Upstream checkout (default third_party/<name>)."),
        trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                              help="Allow loading pickles (they can run code)."),
        truncation_psi: Optional[float] = typer.Option(None, "--truncation-psi", help="EG3D truncation psi."),
        truncation_cutoff: Optional[int] = typer.Option(None, "--truncation-cutoff",
                                                        help="EG3D truncation cutoff (default: all layers)."),
        source_age: Optional[float] = typer.Option(None, "--source-age", help="Assumed age of source photos."),
        prompt: Optional[str] = typer.Option(None, "--prompt", help="Diffusion prompt with {age}."),
        strength: Optional[float] = typer.Option(None, "--strength", help="Diffusion img2img strength."),
        guidance: Optional[float] = typer.Option(None, "--guidance", help="Diffusion guidance scale."),
        steps: Optional[int] = typer.Option(None, "--steps", help="Diffusion inference steps."),
        option: list[str] = typer.Option([], "--option", help="Extra generator option KEY=VALUE (repeatable)."),
        qc: bool = typer.Option(False, "--qc", help="Quality control: face found and identity kept."),
        qc_model: str = typer.Option("sface", "--qc-model", help="Embedder for QC (sface, .pth, .onnx)."),
        qc_min_similarity: float = typer.Option(0.3, "--qc-min-similarity", help="Reject below this cosine."),
        no_contact_sheet: bool = typer.Option(False, "--no-contact-sheet", help="Skip contact_sheet.png."),
    ) -> int:
        from generators.api import run_generate

        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; give a folder for the generated identities")

        options = {
            "batch_size": batch_size, "device": device, "checkpoint": checkpoint, "repo": repo,
            "trust_checkpoint": trust_checkpoint or None, "truncation_psi": truncation_psi,
            "truncation_cutoff": truncation_cutoff, "source_age": source_age, "prompt": prompt,
            "strength": strength, "guidance": guidance, "steps": steps, **_parse_option(option),
        }
        qc_opts = {"model": qc_model, "min_similarity": qc_min_similarity, "device": device} if qc else None
        result = run_generate(method, out, identities=identities, sources=sources, aligned=aligned,
                              all_faces=all_faces, ages=ages,
                              age_bins=age_bins, per_bin=per_bin, seed=seed, options=options, qc=qc_opts,
                              contact_sheet=not no_contact_sheet)
        log.info(f"{result.written} written, {result.reused} kept, {len(result.skipped)} skipped -> {result.out}")
        for w in result.warnings:
            log.warning(f"{w}")
        rc = result.exit_code
        if result.qc is not None:
            log.info(f"QC: {result.qc.rejected} of {result.qc.checked} rejected -> {result.qc.csv}")
        return rc
