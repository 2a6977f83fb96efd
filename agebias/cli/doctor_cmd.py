"""`agebias doctor`: what is installed and ready (torch/CUDA, onnxruntime, optional packages, FG-NET, the ArcFace
backbone, the apparent-age estimator, each generator's checkout, weights and device), and what to do about what is
missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("doctor", help="Report what is installed and ready, and what to do about the rest.")
    def doctor(
        eg3d_checkpoint: Optional[Path] = typer.Option(None, "--eg3d-checkpoint", help="EG3D-Age pickle to check."),
        eg3d_repo: Optional[Path] = typer.Option(None, "--eg3d-repo", help="EG3D-Age checkout to check."),
        cusp_checkpoint: Optional[Path] = typer.Option(None, "--cusp-checkpoint", help="CUSP pickle to check."),
        cusp_repo: Optional[Path] = typer.Option(None, "--cusp-repo", help="CUSP checkout to check."),
        diffusion_model: Optional[str] = typer.Option(None, "--diffusion-model", help="Diffusers model to check."),
        fgnet_root: Optional[Path] = typer.Option(None, "--fgnet-root",
                                                  help="FG-NET folder to check (default datasets/fgnet)."),
        backbone: Optional[Path] = typer.Option(None, "--backbone",
                                                help="ArcFace backbone to check (default third_party/arcface/"
                                                     "ms1mv3_arcface_r50_fp16/backbone.pth, or any model file in "
                                                     "third_party/arcface/)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> int:
        from generators.doctor import format_report, run_doctor

        checks = run_doctor({
            "eg3d": {"repo": eg3d_repo, "checkpoint": eg3d_checkpoint},
            "cusp": {"repo": cusp_repo, "checkpoint": cusp_checkpoint},
            "diffusion": {"checkpoint": diffusion_model},
        }, fgnet_root=fgnet_root, backbone=backbone)
        if as_json:
            typer.echo(json.dumps([c.as_dict() for c in checks], indent=2))
        else:
            typer.echo(format_report(checks))
            typer.echo("cardioid needs nothing else; see third_party/README.md for EG3D-Age and CUSP.")
        return 0
