"""From a dataset on disk to results: scan, align, embed (cached) and evaluate. Used by `agebias evaluate`.

Embeddings are cached per model in ``<out>/embeddings/<model>.npz`` (arrays ``paths``, ``embeddings`` as written by
``agebias embed``, plus the model spec, its file size/mtime and a digest of the aligned crops); a rerun with the
same aligned faces and model reuses them.
"""

from __future__ import annotations

import logging
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from agebias.atomic import atomic_path
from agebias.data.records import FaceRecord, Problem
from agebias.errors import UserError
from agebias.evaluate.settings import EvalSettings

log = logging.getLogger(__name__)


def model_names(specs: Sequence[str]) -> list[str]:
    """Short unique names for model specs (file stem or registered name)."""
    names = []
    for spec in specs:
        p = Path(spec)
        base = p.stem if p.suffix else str(spec).replace(":", "_").replace("/", "_")
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _spec_stamp(spec: str) -> str:
    p = Path(spec)
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return str(spec)


def _cached(path: Path, paths: list[str], stamp: str) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["model"]) != stamp or [str(x) for x in z["paths"]] != paths:
                return None
            return np.asarray(z["embeddings"], dtype=np.float32)
    except Exception:  # a stale or broken cache is recomputed
        return None


def embed_records(records: Sequence[FaceRecord], specs: Sequence[str], cache_dir: Path | None, *,
                  detector: str = "auto", aligned: bool = False, flip: bool = False, device: str | None = None,
                  batch_size: int = 64) -> tuple[list[FaceRecord], dict[str, np.ndarray], list[Problem]]:
    """Align once, embed with every model; returns kept records, embeddings by model name, skipped files."""
    from agebias.data.faces import load_aligned_faces
    from agebias.models.embedder import build_embedder

    faces = load_aligned_faces(list(records), detector=detector, aligned=aligned)
    kept = list(faces.records)
    if len(kept) < 2:
        raise UserError(f"only {len(kept)} usable face images; need at least two")
    paths = [str(r.path) for r in kept]
    crops_digest = hashlib.sha256(np.ascontiguousarray(faces.crops).tobytes()).hexdigest()[:16]
    out: dict[str, np.ndarray] = {}
    for name, spec in zip(model_names(specs), specs):
        # the crops' digest: new image content or other alignment settings must not reuse old embeddings
        stamp = _spec_stamp(spec) + f"|flip={flip}|crops={crops_digest}"
        cache = cache_dir / f"{name}.npz" if cache_dir else None
        emb = _cached(cache, paths, stamp) if cache else None
        if emb is None:
            log.info(f"embedding {len(kept)} faces with {spec}")
            emb = build_embedder(spec, device=device, flip=flip, batch_size=batch_size).embed(faces.crops)
            if cache is not None:
                with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, paths=np.asarray(paths, dtype=str), embeddings=emb.astype(np.float32),
                             model=np.asarray(stamp))
        else:
            log.info(f"reusing cached embeddings for {name}")
        out[name] = emb
    return kept, out, list(faces.skipped)


def evaluate_source(source: str | os.PathLike, kind: str, out_dir: str | os.PathLike, settings: EvalSettings, *,
                    models: Sequence[str] = (), embeddings: Sequence[str] = (), detector: str = "auto",
                    aligned: bool = False, flip: bool = False, device: str | None = None, batch_size: int = 64,
                    plots: bool = True) -> dict:
    """Scan a dataset, embed it (or read precomputed embeddings) and write the evaluation to ``out_dir``."""
    from agebias.data.sources import open_dataset
    from agebias.evaluate.api import evaluate_models, match_embeddings

    if bool(models) == bool(embeddings):
        raise UserError("give either --model SPEC (one or more) or --embeddings FILE.npz (one or more)")
    scan = open_dataset(source, kind=kind)
    if not scan.records:
        raise UserError(f"no face images found in {source}")
    skipped: list[Problem] = list(scan.problems)
    out = Path(out_dir)
    if models:
        records, by_model, sk = embed_records(scan.records, models, out / "embeddings", detector=detector,
                                              aligned=aligned, flip=flip, device=device, batch_size=batch_size)
        skipped += sk
    else:
        by_model = {}
        records = None
        for name, npz in zip(model_names(embeddings), embeddings):
            recs, emb, probs = match_embeddings(scan.records, npz, scan.root)
            if records is None:
                records = recs
                skipped += probs
            elif [r.path for r in recs] != [r.path for r in records]:
                raise UserError(f"{npz} does not cover the same images as {embeddings[0]}")
            by_model[name] = emb
        if not records or len(records) < 2:
            raise UserError(f"fewer than two images of {source} have an embedding in {embeddings[0]}")
    return evaluate_models(records, by_model, out, settings, dataset_name=scan.name, dataset_root=str(scan.root),
                           skipped=skipped, plots=plots)
