"""`agebias align SRC... --out DIR`: aligned 112x112 crops + manifest.csv + skipped list."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer

from agebias.cli.interrupt import on_interrupt
from agebias.cli.messages import report_skipped

log = logging.getLogger(__name__)

_HELP = ("Align faces to the ArcFace 112x112 template.\n\n"
         "Exit 0 when every input was used, 1 when some were skipped (the first few shown; all of them listed in "
         "skipped.csv / skipped.json with the reason).")


def register(app: typer.Typer) -> None:
    @app.command("align", help=_HELP)
    def align(
        sources: List[Path] = typer.Argument(..., help="Image files, folders, FG-NET/AgeDB/generated roots or "
                                                       "manifest CSVs."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder for crops, manifest.csv, skipped.csv."),
        detector: str = typer.Option("auto", "--detector", "-d",
                                     help="auto (landmarks when the dataset has them, else mtcnn) | mtcnn | "
                                          "landmarks | squash (the whole image resized, no alignment) | none"),
        all_faces: bool = typer.Option(False, "--all-faces", help="Keep every face, not only the largest central "
                                                                  "one."),
        aligned: bool = typer.Option(False, "--aligned", help="Inputs are already aligned 112x112 crops: pass "
                                                              "them through."),
        kind: str = typer.Option("auto", "--kind", help="Source kind: auto | fgnet | manifest | generated | agedb "
                                                        "| folder."),
        cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                                 help="Aligned-crop cache (default $AGEBIAS_CACHE/aligned)."),
        device: str = typer.Option("cpu", "--device", help="Device for MTCNN (cpu, cuda)."),
    ) -> int:
        from agebias.data.export import align_to_folder
        from agebias.data.faces import default_cache_dir

        if not aligned:
            on_interrupt(f"the faces aligned so far are cached in {cache_dir or default_cache_dir()}, and the same "
                         f"command reuses them")
        result = align_to_folder(sources, out, kind=kind, detector=detector, aligned=aligned, all_faces=all_faces,
                                 cache_dir=cache_dir, device=device)
        log.info(f"wrote {len(result.written)} crops and {result.manifest}")
        return report_skipped(result.skipped, str(out / "skipped.csv"))
