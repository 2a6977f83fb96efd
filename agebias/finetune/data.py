"""Training data for fine-tuning: sources -> aligned crops -> identity split -> labels and age groups.

- ``--data`` takes one or more sources ``PATH[:WEIGHT]``: the generated layout ``<id>/<id>_<age>.png``
  (+ ``manifest.csv``), a manifest CSV, or anything :func:`agebias.data.sources.open_dataset` reads. Identities
  are namespaced by source (``s0/seed0001``) so equal names in two sources stay two people.
- WEIGHT (default 1) is the source's share per epoch: each epoch draws ``round(WEIGHT * n)`` of its ``n``
  training images (1: each once; 0.5: a fresh random half; 2: each twice), then shuffles all sources together.
  A source of weight 0 is left out entirely (not read, no identities, no validation images).
- Faces are aligned by :func:`agebias.data.faces.load_aligned_faces` (``--aligned``: images must already be
  112x112 crops; others are skipped with the reason). Every skipped file is listed with its reason.
- Split by identity, deterministic from the seed: a fraction ``val_fraction`` of the identities *that have at
  least two images* (at least 2 of them) is held out for verification; identities with a single image train
  only. Fewer than 2 identities with >= 2 images (when validating) or fewer than 2 training identities is an error.
- Age groups from ``--age-bins`` in the toolkit's one convention (:mod:`agebias.data.ages`: inclusive ranges
  ``"0-12,13-19,20-39,40-69"``, ``70+`` open); images without an age or outside every bin get group -1.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agebias.data.ages import AgeBins
from agebias.data.records import FaceRecord, Problem
from agebias.errors import DataError, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    path: str
    weight: float = 1.0


def parse_source(spec: str) -> Source:
    """``"synth/:1.0"`` -> ``Source("synth/", 1.0)``; a suffix that is not a number belongs to the path."""
    head, sep, tail = str(spec).rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return Source(str(spec), 1.0)
        if weight < 0:
            raise UserError(f"bad --data weight in '{spec}': must be >= 0")
        return Source(head, weight)
    return Source(str(spec), 1.0)


@dataclass
class ImageSet:
    """Aligned crops with their identity, age group and source (one row per image)."""

    crops: np.ndarray  # uint8 (N, 112, 112, 3) RGB
    subjects: list[str]
    ages: list[int | None]
    groups: np.ndarray  # int64 (N,)
    source_index: np.ndarray  # int64 (N,)
    paths: list[str]

    def __len__(self) -> int:
        return len(self.subjects)

    def take(self, idx: np.ndarray) -> "ImageSet":
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(self.crops[idx], [self.subjects[i] for i in idx], [self.ages[i] for i in idx],
                        self.groups[idx], self.source_index[idx], [self.paths[i] for i in idx])


@dataclass
class TrainingData:
    train: ImageSet
    val: ImageSet
    labels: np.ndarray  # int64 (N_train,) class index per training image
    class_names: list[str]  # index -> namespaced identity
    group_names: list[str]
    sources: list[Source]
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def scan_sources(sources: list[Source]) -> tuple[list[FaceRecord], list[int], list[Problem], list[dict],
                                                list[bool | None]]:
    """Scan every source; returns records (subjects namespaced ``s<i>/``), their source index, problems, a
    per-source summary and what each source says about alignment (``DatasetScan.aligned``)."""
    from agebias.data.sources import open_dataset

    records: list[FaceRecord] = []
    source_of: list[int] = []
    problems: list[Problem] = []
    per_source: list[dict] = []
    aligned: list[bool | None] = []
    for i, src in enumerate(sources):
        scan = open_dataset(src.path)
        problems.extend(scan.problems)
        prefix = f"s{i}/" if len(sources) > 1 else ""
        for r in scan.records:
            records.append(r.with_(subject=prefix + r.subject))
            source_of.append(i)
        aligned.append(scan.aligned)
        per_source.append({"path": src.path, "weight": src.weight, "kind": scan.name, "images": len(scan.records),
                           "identities": len({r.subject for r in scan.records}), "problems": len(scan.problems)})
    return records, source_of, problems, per_source, aligned


def load_crops(records: list[FaceRecord], source_of: list[int], data_aligned: list[bool | None], *,
               aligned: bool | None, detector: str, cache_dir: str | None = None
               ) -> tuple[list[FaceRecord], np.ndarray, list[int], list[Problem]]:
    """Aligned crops of every record, each source prepared as it says (``aligned`` None) or as the setting says;
    returns kept records, crops, their source index and the skipped files."""
    from agebias.data.faces import load_aligned_faces, use_as_aligned

    kept: list[FaceRecord] = []
    crops: list[np.ndarray] = []
    kept_source: list[int] = []
    skipped: list[Problem] = []
    for s, says in enumerate(data_aligned):
        mine = [r for r, i in zip(records, source_of, strict=True) if i == s]
        if not mine:
            continue
        faces = load_aligned_faces(mine, detector=detector, aligned=use_as_aligned(says, aligned),
                                   cache_dir=cache_dir, progress="aligning")
        kept.extend(faces.records)
        crops.append(faces.crops)
        kept_source.extend([s] * len(faces.records))
        skipped.extend(faces.skipped)
    arr = np.concatenate(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
    return kept, arr, kept_source, skipped


def split_identities(subjects: list[str], val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Return (train identities, val identities); only identities with >= 2 images can be held out."""
    counts: dict[str, int] = {}
    for s in subjects:
        counts[s] = counts.get(s, 0) + 1
    names = sorted(counts)
    if val_fraction <= 0:
        return set(names), set()
    eligible = [n for n in names if counts[n] >= 2]
    if len(eligible) < 2:
        raise UserError(f"validation needs at least 2 identities with >= 2 images, found {len(eligible)} "
                        f"(of {len(names)} identities); add data or pass --val-fraction 0")
    n_val = min(len(eligible), max(2, int(round(val_fraction * len(names)))))
    rng = np.random.default_rng(seed)
    val = {eligible[i] for i in rng.permutation(len(eligible))[:n_val]}
    return set(names) - val, val


def prepare_data(sources: list[Source], *, aligned: bool | None, detector: str, val_fraction: float, seed: int,
                 age_bins: str, cache_dir: str | None = None) -> TrainingData:
    """Scan, align, split and label (see the module notes); raises :class:`UserError` on unusable data.
    ``aligned`` None: each source is used as given when it says its images are aligned crops (a set agebias
    generated), else detected and aligned."""
    bins = AgeBins.parse(age_bins)
    records, source_of, problems, per_source, data_aligned = scan_sources(sources)
    if not records:
        raise DataError("no training images found in " + ", ".join(s.path for s in sources))
    kept, crops, kept_source, skipped = load_crops(records, source_of, data_aligned, aligned=aligned,
                                                   detector=detector, cache_dir=cache_dir)
    problems.extend(skipped)
    if skipped:
        log.info(f"finetune: {len(skipped)} image(s) skipped (see skipped.csv); first: {skipped[0].path}: "
             f"{skipped[0].reason}")
    if not kept:
        raise UserError(f"none of the {len(records)} training images could be used; first problem: "
                        f"{problems[0].path}: {problems[0].reason}" if problems else "no usable training images")
    src_idx = np.asarray(kept_source, dtype=np.int64)
    ages = [r.age for r in kept]
    images = ImageSet(crops, [r.subject for r in kept], ages, bins.assign(ages), src_idx, [str(r.path) for r in kept])
    subjects = images.subjects
    n_ident = len(set(subjects))
    if n_ident < 2:
        raise UserError(f"training needs at least 2 identities, found {n_ident}")
    train_ids, val_ids = split_identities(subjects, val_fraction, seed)
    if len(train_ids) < 2:
        raise UserError(f"only {len(train_ids)} identity left for training after holding out {len(val_ids)} "
                        f"for validation; lower --val-fraction or add identities")
    singles = sum(1 for n in Counter(subjects).values() if n == 1)
    if singles:
        log.info(f"finetune: {singles} identit{'y has' if singles == 1 else 'ies have'} a single image "
             f"(used for training only, never held out)")
    train_idx = np.array([i for i, s in enumerate(subjects) if s in train_ids], dtype=np.int64)
    val_idx = np.array([i for i, s in enumerate(subjects) if s in val_ids], dtype=np.int64)
    train, val = images.take(train_idx), images.take(val_idx)
    class_names = sorted(train_ids)
    cls = {n: i for i, n in enumerate(class_names)}
    labels = np.array([cls[s] for s in train.subjects], dtype=np.int64)
    summary = {
        "sources": per_source,
        "images_found": len(records),
        "images_used": len(images),
        "images_skipped": len(problems),
        "identities": n_ident,
        "single_image_identities": singles,
        "train_identities": len(train_ids),
        "train_images": len(train),
        "val_identities": len(val_ids),
        "val_images": len(val),
        "val_identity_names": sorted(val_ids),
        "age_groups": bins.labels,
        "train_images_per_group": {n: int((train.groups == g).sum()) for g, n in enumerate(bins.labels)},
        "train_images_without_group": int((train.groups < 0).sum()),
    }
    return TrainingData(train, val, labels, class_names, bins.labels, sources, problems, summary)


def epoch_order(source_index: np.ndarray, weights: list[float], seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample order (training-image indices), deterministic from (seed, epoch); see module notes."""
    rng = np.random.default_rng([int(seed), int(epoch), 7])
    picks: list[np.ndarray] = []
    for s, w in enumerate(weights):
        members = np.flatnonzero(source_index == s)
        n_take = int(round(w * len(members)))
        full, rest = divmod(n_take, len(members)) if len(members) else (0, 0)
        picks.extend([members] * full)
        if rest:
            picks.append(members[rng.permutation(len(members))[:rest]])
    order = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    return order[rng.permutation(len(order))]


def epoch_batches(order: np.ndarray, batch_size: int, rank: int = 0, world_size: int = 1) -> list[np.ndarray]:
    """This process's batches: the order is cut to a multiple of ``world_size``, process r takes every
    world_size-th sample from r, in batches of ``batch_size``; a final batch of one sample is dropped (BatchNorm
    cannot train on it)."""
    n = (len(order) // world_size) * world_size
    mine = order[:n][rank::world_size]
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    if batches and len(batches[-1]) < 2:
        batches.pop()
    return batches
