"""`agebias embed`: face images -> L2-normalised embeddings in an ``.npz`` (arrays ``paths``, ``embeddings``).

Faces are prepared as in ``agebias evaluate`` (:func:`agebias.evaluate.runner.prepare_faces`): a set generated as
aligned crops is used as given, other images are detected and aligned (``--detector``), ``--aligned`` / ``--no-aligned``
decide explicitly. Files that cannot be used are listed as skipped (exit code 1, the first few shown).

Under ``torchrun --nproc_per_node N`` each process embeds a block of the images into ``<out>.parts/`` and rank 0
joins the blocks into ``--out`` (the same file as one process writes; see :mod:`agebias.evaluate.embed_shards`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import typer

from agebias.atomic import atomic_path
from agebias.cli.messages import report_skipped
from agebias.cli.options import with_settings
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import DataError, SettingsError
from agebias.evaluate.settings import EmbedSettings
from agebias.progress import bar

log = logging.getLogger(__name__)


def collect_records(inputs: list[Path]) -> DatasetScan:
    """Files as given; folders read as datasets (a generated set by its layout and manifest, so the contact sheet
    is not a face and its aligned crops are known as such; any other folder searched recursively, sorted).
    Missing inputs are a user error."""
    from agebias.data.folder import record_for_file
    from agebias.data.sources import open_dataset

    records: list[FaceRecord] = []
    problems: list[Problem] = []
    aligned: set[bool | None] = set()
    for item in inputs:
        if item.is_dir():
            scan = open_dataset(item)
            records.extend(scan.records)
            problems.extend(scan.problems)
            aligned.add(scan.aligned)
        elif item.exists():
            records.append(record_for_file(item))
            aligned.add(None)
        else:
            raise DataError(f"input not found: {item}")
    return DatasetScan("inputs", Path("."), records, problems, aligned=aligned.pop() if len(aligned) == 1 else None)


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
    @with_settings(settings=EmbedSettings)
    def embed(
        settings: EmbedSettings,
        inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
        model: str = typer.Option(..., "--model", "-m",
                                  help="A .pth/.safetensors checkpoint, an .onnx file, sface, or random:ARCH "
                                       "(untrained)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output .npz file."),
    ) -> int:
        from agebias.distributed import finish_share
        from agebias.evaluate.embed_shards import embed_in_parts, model_stamp, prepare_in_shares
        from agebias.evaluate.runner import prepare_faces
        from agebias.models.embedder import build_embedder

        if out.is_dir():
            raise SettingsError(f"--out {out} is a folder; give a file name such as {out / 'embeddings.npz'}")
        embedder = build_embedder(model, arch=settings.arch, device=settings.device, flip=settings.flip,
                                  batch_size=settings.batch_size, trust_checkpoint=settings.trust_checkpoint,
                                  backend=settings.backend)
        scan = collect_records(inputs)
        shared = prepare_in_shares(scan, lambda part: prepare_faces(part, settings))
        stamp = f"{model_stamp(model)}|flip={settings.flip}|backend={settings.backend}|arch={settings.arch}"
        kept, skipped = shared.records, scan.problems + shared.skipped
        paths = [str(r.path) + (f"#face{r.extra['face']}" if "face" in r.extra else "") for r in kept]
        embed_in_parts(shared, lambda crops: embed_crops(embedder, crops), out.with_name(out.name + ".parts"), stamp,
                       lambda embeddings: write_npz(out, paths, embeddings, skipped, model))
        finish_share(shared.info)
        log.info(f"embedded {len(kept)} image(s) with {embedder.name} (dim {embedder.dim}) -> {out}")
        return report_skipped(skipped, f"{out} (arrays skipped_paths, skipped_reasons)")
