"""From a dataset on disk to results: scan, prepare faces, embed (cached) and evaluate. Used by ``agebias
evaluate``, the pipeline and :func:`agebias.evaluate_dataset`.

Face preparation follows :class:`~agebias.evaluate.settings.EmbedSettings`. ``aligned`` unset means "ask the data":
a set agebias generated as aligned crops (``generation.json``: ``aligned_crops``) is used as given, anything else is
detected and aligned; under ``--protocol msc`` the ``auto`` detector squashes whole photos instead, as the MSc thesis
did (:func:`~agebias.evaluate.settings.embed_for_protocol`). A user choice that contradicts what the data says is
followed, with a warning. How the faces were prepared, and the rule that chose the detector, are recorded
(``dataset.preparation`` in results.json, and the report's first lines).

Embeddings are cached per model in ``<cache_dir>/<model>.npz`` (arrays ``paths``, ``embeddings`` as written by
``agebias embed``, plus the model spec, its file size/mtime and a digest of the aligned crops); a rerun with the
same aligned faces and model reuses them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agebias import distributed
from agebias.atomic import atomic_path
from agebias.data.records import DatasetScan, FaceRecord, Problem
from agebias.errors import DataError, SettingsError
from agebias.evaluate.settings import EmbedSettings, EvalSettings, embed_for_protocol

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Embedded faces: kept records (in order), one (N, D) array per model, skipped files, how faces were
    prepared."""

    records: list[FaceRecord]
    by_model: dict[str, np.ndarray]
    skipped: list[Problem] = field(default_factory=list)
    preparation: dict[str, Any] = field(default_factory=dict)


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


def prepare_faces(scan: DatasetScan, settings: EmbedSettings, *, progress: str | None = "aligning"):
    """112x112 crops of a scan's records (aligned, as given, or squashed), and a description of how they were
    prepared.

    ``squash`` takes every image whole, whatever the data says about alignment (a 112x112 crop is left as it is),
    so only an explicit ``aligned = True`` conflicts with it."""
    from agebias.data.faces import load_aligned_faces, use_as_aligned

    squash = settings.detector == "squash"
    aligned = bool(settings.aligned) if squash else use_as_aligned(scan.aligned, settings.aligned)
    if aligned and settings.detector not in ("auto", "none"):
        raise SettingsError(f"images used as given (aligned) cannot also go through the '{settings.detector}' "
                            f"detector", field="detector", stage=settings.stage)
    faces = load_aligned_faces(scan.records, detector=settings.detector, aligned=aligned, progress=progress)
    methods = Counter(r.extra.get("prepared", "?") for r in faces.records)
    preparation = {"aligned_setting": settings.aligned, "data_says_aligned": scan.aligned,
                   "used_as_given": aligned, "detector": settings.detector, "flip": settings.flip,
                   "methods": dict(methods), "summary": describe_preparation(dict(methods), scan.aligned,
                                                                           settings.aligned, settings.flip)}
    return faces, preparation


def describe_preparation(methods: dict[str, int], data_aligned: bool | None, setting: bool | None,
                         flip: bool) -> str:
    """One sentence: how the faces were prepared (for reports)."""
    names = {"as given": "used as given (112x112 aligned crops)", "landmarks": "aligned from their landmarks",
             "mtcnn": "detected with MTCNN and aligned", "squash": "squashed whole to 112x112 (no alignment)"}
    parts = [f"{n} {names.get(m, m)}" for m, n in sorted(methods.items(), key=lambda kv: -kv[1])]
    why = ""
    if setting is None and data_aligned and "as given" in methods:
        why = " because the generated set says its images are aligned crops"
    elif setting is not None:
        why = f" (--{'aligned' if setting else 'no-aligned'} given)"
    return ("Faces: " + "; ".join(parts) + why + (", each embedding fused with its mirror image" if flip else "")
            + ".") if parts else "No faces."


def _cached(path: Path, paths: list[str], stamp: str) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["model"]) != stamp or [str(x) for x in z["paths"]] != paths:
                return None
            return np.asarray(z["embeddings"], dtype=np.float32)
    except (OSError, ValueError, KeyError):  # a stale or broken cache is recomputed
        return None


def _embed_with(spec: str, settings: EmbedSettings, crops: np.ndarray) -> np.ndarray:
    from agebias.models.embedder import build_embedder

    return build_embedder(spec, arch=settings.arch, device=settings.device, flip=settings.flip,
                          batch_size=settings.batch_size, trust_checkpoint=settings.trust_checkpoint,
                          backend=settings.backend).embed(crops)


def _write_cache(path: Path, paths: list[str], stamp: str, emb: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, paths=np.asarray(paths, dtype=str), embeddings=emb.astype(np.float32), model=np.asarray(stamp))


def embed_records(scan: DatasetScan, specs: Sequence[str], settings: EmbedSettings | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Embedded:
    """Prepare the faces once, embed them with every model (cached in ``cache_dir`` when given).

    Under torchrun each process prepares and embeds a block of the records (``<cache_dir>/<model>.parts/``, see
    :mod:`agebias.evaluate.embed_shards`); rank 0 joins the blocks and returns the whole result, the other ranks
    raise :class:`agebias.distributed.ShareDone` once their blocks are written."""
    from agebias.evaluate.embed_shards import embed_in_parts, model_stamp, prepare_in_shares

    settings = settings or EmbedSettings()
    if distributed.from_env().enabled and not cache_dir:
        raise SettingsError("embedding under torchrun needs a cache folder that every process can reach "
                            "(cache_dir)")
    shared = prepare_in_shares(scan, lambda part: prepare_faces(part, settings))
    kept = shared.records
    if len(kept) < 2:
        raise DataError(f"only {len(kept)} usable face images in {scan.root}; need at least two")
    preparation = {**shared.preparation, "methods": shared.methods,
                   "summary": describe_preparation(shared.methods, scan.aligned, settings.aligned, settings.flip)}
    paths = [str(r.path) for r in kept]
    out: dict[str, np.ndarray] = {}
    for name, spec in zip(model_names(specs), specs, strict=True):
        # the crops' digest: new image content or other alignment settings must not reuse old embeddings
        stamp = model_stamp(spec) + f"|flip={settings.flip}|backend={settings.backend}|crops={shared.digest}"
        cache = Path(cache_dir) / f"{name}.npz" if cache_dir else None
        emb = _cached(cache, paths, stamp) if cache else None
        if emb is None:
            log.info(f"embedding {len(kept)} faces with {spec}")
            emb = embed_in_parts(shared, partial(_embed_with, spec, settings),
                                 cache.with_suffix(".parts") if cache else None, stamp,
                                 partial(_write_cache, cache, paths, stamp) if cache else None)
        else:
            log.info(f"reusing cached embeddings for {name}")
        out[name] = emb
    distributed.finish_share(shared.info)
    return Embedded(kept, out, list(shared.skipped), preparation)


def read_embeddings(scan: DatasetScan, npz_files: Sequence[str | os.PathLike]) -> Embedded:
    """Precomputed embeddings (``agebias embed`` .npz files, one per model) matched to the scan's records by path;
    every file must cover the same images."""
    from agebias.evaluate.api import match_embeddings

    by_model: dict[str, np.ndarray] = {}
    records: list[FaceRecord] | None = None
    skipped: list[Problem] = []
    for name, npz in zip(model_names([str(f) for f in npz_files]), npz_files, strict=True):
        recs, emb, probs = match_embeddings(scan.records, npz, scan.root)
        if records is None:
            records, skipped = recs, probs
        elif [r.path for r in recs] != [r.path for r in records]:
            raise DataError(f"{npz} does not cover the same images as {npz_files[0]}")
        by_model[name] = emb
    if not records or len(records) < 2:
        raise DataError(f"fewer than two images of {scan.root} have an embedding in {npz_files[0]}")
    preparation = {"summary": "Faces: precomputed embeddings (" + ", ".join(str(f) for f in npz_files) + ").",
                   "precomputed": [str(f) for f in npz_files]}
    return Embedded(records, by_model, skipped, preparation)


def flip_fused_embeddings(records: Sequence[FaceRecord], aligned: bool | None, specs: Sequence[str],
                          settings: EmbedSettings, cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Embeddings of ``records`` (faces prepared as ``settings`` say) fused with their mirror images, one (N, D)
    array per model, in ``records`` order: FR-NAS's identification metrics use them. Single process; cached in
    ``<cache_dir>/<model>.flip.npz`` like :func:`embed_records`' files."""
    from agebias.evaluate.embed_shards import model_stamp

    fused = replace(settings, flip=True)
    faces, _ = prepare_faces(DatasetScan("flip", Path("."), list(records), aligned=aligned), fused,
                             progress="preparing faces (flip-fused embeddings)")
    if len(faces.records) != len(records):
        raise DataError("a face prepared before could not be prepared again for the flip-fused embeddings")
    paths = [str(r.path) for r in faces.records]
    digest = hashlib.sha256(np.ascontiguousarray(faces.crops).tobytes()).hexdigest()[:16]
    out: dict[str, np.ndarray] = {}
    for name, spec in zip(model_names(specs), specs, strict=True):
        stamp = model_stamp(spec) + f"|flip=True|backend={fused.backend}|crops={digest}"
        cache = Path(cache_dir) / f"{name}.flip.npz" if cache_dir else None
        emb = _cached(cache, paths, stamp) if cache else None
        if emb is None:
            log.info(f"embedding {len(paths)} faces with {spec}, fused with their mirror images (FR-NAS "
                     f"identification)")
            emb = _embed_with(spec, fused, faces.crops)
            if cache:
                _write_cache(cache, paths, stamp, emb)
        out[name] = emb
    return out


def evaluate_source(source: str | os.PathLike, *, kind: str = "auto", models: Sequence[str] = (),
                    embeddings: Sequence[str | os.PathLike] = (), settings: EvalSettings | None = None,
                    embed: EmbedSettings | None = None, cache_dir: str | os.PathLike | None = None):
    """Scan a dataset, embed it with ``models`` (or read precomputed ``embeddings``) and evaluate it. Returns an
    :class:`~agebias.evaluate.result.EvaluationResult` (``.save(folder)`` writes the files).

    Faces are prepared for the protocol (:func:`agebias.evaluate.settings.embed_for_protocol`: under ``msc`` the
    ``auto`` detector squashes whole photos, as the thesis did); the rule is recorded in ``dataset.preparation``.
    When the all-pairs protocol computes FR-NAS's identification ranks and the embeddings are not flip-fused
    already, the models also embed every face fused with its mirror image for those metrics."""
    from agebias.data.sources import open_dataset
    from agebias.evaluate.allpairs import identification_ranks
    from agebias.evaluate.api import evaluate_records

    if bool(models) == bool(embeddings):
        raise SettingsError("give either models (--model SPEC, one or more) or embeddings (--embeddings FILE.npz)")
    settings = settings or EvalSettings()
    embed, rule = embed_for_protocol(embed or EmbedSettings(), settings.protocol)
    scan = open_dataset(source, kind=kind, check_files=not embeddings)
    if not scan.records:
        raise DataError(f"no face images found in {source}")
    fused = None
    if models:
        embedded = embed_records(scan, models, embed, cache_dir)
        embedded.preparation["detector_rule"] = rule
        if not embed.flip and identification_ranks(settings, len(embedded.records)):
            fused = flip_fused_embeddings(embedded.records, scan.aligned, models, embed, cache_dir)
    else:
        embedded = read_embeddings(scan, embeddings)
    return evaluate_records(embedded.records, embedded.by_model, settings, dataset_name=scan.name,
                            dataset_root=str(scan.root), skipped=[*scan.problems, *embedded.skipped],
                            preparation=embedded.preparation, identification_embeddings=fused)
