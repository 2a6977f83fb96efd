"""Embedding across torchrun processes (``agebias embed`` and the embedding step of ``agebias evaluate``).

Each process prepares the faces of a contiguous block of the scan's records (:meth:`DistInfo.share`), embeds them
and saves its part; once every part is there rank 0 joins them in rank order, which is the scan's order, so the
result is a single-process run's (same faces, same order; embeddings equal up to the float differences of batch
composition). A single process does the same without part files.

Part files: ``<parts_dir>/<lo>-<hi>.npz`` for records ``lo..hi-1`` of the scan (end exclusive): arrays ``paths``
(the kept faces' files, in order), ``embeddings`` (float32, one row each) and ``stamp`` (the model, the embedding
settings and a digest of the block's aligned crops). A part with the caller's stamp and the same faces is reused,
so a run in which a process died redoes only the missing parts; rank 0 deletes the folder after joining.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agebias import distributed
from agebias.atomic import atomic_path
from agebias.data.faces import AlignedFaces
from agebias.data.records import DatasetScan, FaceRecord, Problem


@dataclass
class SharedFaces:
    """This process's block of prepared faces, and what every process prepared (rank order = scan order)."""

    info: distributed.DistInfo
    n_scan: int  # records in the scan
    block: range  # this process's records: positions in the scan
    faces: AlignedFaces  # this process's prepared faces
    records: list[FaceRecord]  # every kept face, in scan order
    skipped: list[Problem]  # every file the preparation could not use, in scan order
    methods: dict[str, int]  # how many faces each preparation method made, over all processes
    preparation: dict[str, Any]  # the preparation record of this process's block (see runner.prepare_faces)
    block_digest: str  # digest of this block's crops
    digest: str  # digest of every crop in order: the same for any number of processes


def model_stamp(spec: str) -> str:
    """A model spec with its file's resolved path, size and modification time (a changed file is another model)."""
    p = Path(spec)
    if p.is_file():
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return str(spec)


def _crop_digests(crops: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest() for c in crops]


def _join_digests(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def prepare_in_shares(scan: DatasetScan,
                      prepare: Callable[[DatasetScan], tuple[AlignedFaces, dict[str, Any]]]) -> SharedFaces:
    """Prepare this process's block of ``scan`` with ``prepare`` (e.g. :func:`agebias.evaluate.runner.prepare_faces`)
    and share the kept records, skips and crop digests with every process."""
    info = distributed.init_distributed("cpu")  # only objects and barriers pass between the processes
    block = info.share(len(scan.records))
    mine = replace(scan, records=scan.records[block.start:block.stop], problems=[]) if info.enabled else scan
    faces, preparation = prepare(mine)
    digests = _crop_digests(faces.crops)
    shared = distributed.all_gather_objects(info, (list(faces.records), list(faces.skipped),
                                                   dict(preparation.get("methods", {})), digests))
    methods: Counter[str] = Counter()
    for _, _, counts, _ in shared:
        methods.update(counts)
    return SharedFaces(info=info, n_scan=len(scan.records), block=block, faces=faces,
                       records=[r for recs, *_ in shared for r in recs],
                       skipped=[p for _, probs, *_ in shared for p in probs], methods=dict(methods),
                       preparation=preparation, block_digest=_join_digests(digests),
                       digest=_join_digests([d for *_, ds in shared for d in ds]))


def embed_in_parts(shared: SharedFaces, embed: Callable[[np.ndarray], np.ndarray], parts_dir: Path | None,
                   stamp: str, save: Callable[[np.ndarray], None] | None = None) -> np.ndarray | None:
    """Embeddings of every kept face, in scan order, on rank 0 (None on the other ranks). ``embed(crops)`` returns
    float32 rows; ``stamp`` identifies the model and settings (a part made with another stamp is redone). Rank 0
    calls ``save(embeddings)`` before it deletes the parts, so that a run stopped before the output is saved
    keeps them. Several processes need ``parts_dir``, a folder every process can reach."""
    info, faces = shared.info, shared.faces
    if not info.enabled:
        out = embed(faces.crops).astype(np.float32, copy=False)
        if save is not None:
            save(out)
        return out
    if parts_dir is None:
        raise ValueError("embedding in several processes needs a folder for the parts")
    parts_dir = Path(parts_dir)
    paths = [str(r.path) for r in faces.records]
    part_stamp = f"{stamp}|block={shared.block_digest}"
    part = _part_path(parts_dir, shared.block)
    if _read_part(part, paths, part_stamp) is None:
        emb = embed(faces.crops) if len(faces.crops) else np.zeros((0, 0), np.float32)
        with atomic_path(part) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, paths=np.asarray(paths, dtype=str), embeddings=np.asarray(emb, np.float32),
                     stamp=np.asarray(part_stamp))
    distributed.barrier(info)  # every part is written
    if not info.is_main:
        return None
    n = len(shared.records)
    rows = []
    for k in range(info.world_size):
        with np.load(_part_path(parts_dir, info.share(shared.n_scan, k)), allow_pickle=False) as z:
            if len(z["embeddings"]):
                rows.append(np.asarray(z["embeddings"], np.float32))
    out = np.concatenate(rows).astype(np.float32, copy=False) if rows else np.zeros((0, 0), np.float32)
    if len(out) != n:
        raise RuntimeError(f"the parts in {parts_dir} hold {len(out)} embeddings for {n} faces")
    if save is not None:
        save(out)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return out


def _part_path(parts_dir: Path, block: range) -> Path:
    return parts_dir / f"{block.start}-{block.stop}.npz"


def _read_part(path: Path, paths: list[str], stamp: str) -> np.ndarray | None:
    """A part's embeddings when it was made with ``stamp`` for the faces ``paths``; else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["stamp"]) != stamp or [str(p) for p in z["paths"]] != paths:
                return None
            return np.asarray(z["embeddings"], dtype=np.float32)
    except (OSError, ValueError, KeyError):  # a damaged part is made again
        return None
