"""`agebias embed`: face images -> L2-normalised embeddings in an ``.npz`` (arrays ``paths``, ``embeddings``).

Without ``--aligned`` faces are found and aligned with MTCNN (see :mod:`agebias.data.faces`); with it every input
must already be a 112x112 aligned RGB crop. Files that cannot be used are listed as skipped (exit code 1).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import typer

from agebias.atomic import atomic_path
from agebias.data.records import FaceRecord, Problem
from agebias.errors import BadInputFile, UserError
from agebias.progress import bar

log = logging.getLogger(__name__)

CROP = 112


def collect_records(inputs: list[Path]) -> tuple[list[FaceRecord], list[Problem]]:
    """Files as given, folders scanned recursively (sorted); missing inputs are a user error."""
    from agebias.data.folder import record_for_file, scan_folder

    records: list[FaceRecord] = []
    problems: list[Problem] = []
    for item in inputs:
        if item.is_dir():
            scan = scan_folder(item)
            records.extend(scan.records)
            problems.extend(scan.problems)
        elif item.exists():
            records.append(record_for_file(item))
        else:
            raise UserError(f"input not found: {item}")
    return records, problems


def load_aligned_crops(records: list[FaceRecord]) -> tuple[list[FaceRecord], np.ndarray, list[Problem]]:
    """Read 112x112 aligned crops as they are; other sizes and unreadable files are skipped with the reason."""
    from agebias.data.images import load_image

    kept: list[FaceRecord] = []
    crops: list[np.ndarray] = []
    skipped: list[Problem] = []
    for record in records:
        try:
            image = load_image(record.path)
        except BadInputFile as err:
            skipped.append(Problem(str(record.path), err.reason))
            continue
        if image.shape[:2] != (CROP, CROP):
            skipped.append(Problem(str(record.path), f"not a {CROP}x{CROP} aligned crop (got {image.shape[1]}x"
                                                     f"{image.shape[0]}); drop --aligned to detect and align faces"))
            continue
        kept.append(record)
        crops.append(image)
    arr = np.stack(crops) if crops else np.zeros((0, CROP, CROP, 3), np.uint8)
    return kept, arr, skipped


def embed_crops(embedder, crops: np.ndarray) -> np.ndarray:
    """Embed with a progress bar (chunks of a few batches)."""
    out = np.zeros((len(crops), embedder.dim), np.float32)
    step = max(1, embedder.batch_size * 4)
    with bar(len(crops), "embedding", unit="img") as progress:
        for start in range(0, len(crops), step):
            out[start:start + step] = embedder.embed(crops[start:start + step])
            progress.update(min(step, len(crops) - start))
    return out


def write_npz(path: Path, paths: list[str], embeddings: np.ndarray, skipped: list[Problem], model: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, paths=np.asarray(paths, dtype=str), embeddings=embeddings.astype(np.float32),
                 skipped_paths=np.asarray([p.path for p in skipped], dtype=str),
                 skipped_reasons=np.asarray([p.reason for p in skipped], dtype=str), model=np.asarray(model))


def register(app: typer.Typer) -> None:
    @app.command("embed", help="Embed face images with a model; writes arrays 'paths' and 'embeddings' to an .npz.")
    def embed(
        inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
        model: str = typer.Option(..., "--model", "-m",
                                  help="A .pth/.safetensors checkpoint, an .onnx file, sface, or random:ARCH "
                                       "(untrained)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output .npz file."),
        arch: str | None = typer.Option(None, "--arch", help="Backbone name (default: inferred from the keys)."),
        aligned: bool = typer.Option(False, "--aligned", help="Inputs are already 112x112 aligned crops."),
        flip: bool = typer.Option(False, "--flip", help="Fuse with the horizontally flipped image."),
        batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA when present)."),
        backend: str = typer.Option("torch", "--backend",
                                    help="torch (fp32), torch-bf16 (bf16 autocast + channels_last: fastest on "
                                         "a modern CPU, cosine to fp32 >= 0.999), or onnxruntime (exports a "
                                         ".pth/.safetensors model once)."),
        trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                              help="Allow a full pickle checkpoint (it can run code: trusted "
                                                   "files only)."),
    ) -> int:
        from agebias.models.embedder import build_embedder

        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give a file name such as {out / 'embeddings.npz'}")
        embedder = build_embedder(model, arch=arch, device=device, flip=flip, batch_size=batch_size,
                                  trust_checkpoint=trust_checkpoint, backend=backend)
        records, problems = collect_records(inputs)
        if aligned:
            kept, crops, skipped = load_aligned_crops(records)
        else:
            from agebias.data.faces import load_aligned_faces

            faces = load_aligned_faces(records, detector="mtcnn")
            kept, crops, skipped = faces.records, faces.crops, list(faces.skipped)
        skipped = problems + skipped
        embeddings = embed_crops(embedder, crops)
        paths = [str(r.path) + (f"#face{r.extra['face']}" if "face" in r.extra else "") for r in kept]
        write_npz(out, paths, embeddings, skipped, model)
        for p in skipped:
            print(f"skipped: {p.path}: {p.reason}", file=sys.stderr)
        log.info(f"embedded {len(kept)} image(s) with {embedder.name} (dim {embedder.dim}) -> {out}"
             + (f"; {len(skipped)} skipped" if skipped else ""))
        return 1 if skipped else 0
