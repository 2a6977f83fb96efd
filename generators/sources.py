"""Identities for generators: seeds (``seed0000``, ``seed0001``, ...) or source photos in a folder.

Source photos: one identity per image, id = the file stem sanitised to letters, digits, ``._-`` (clashes get
``-2``, ``-3`` suffixes). Faces are found with MTCNN and aligned to the ArcFace 112x112 template through the data
API (:func:`agebias.data.faces.load_aligned_faces`), or taken as already-aligned 112x112 crops with ``aligned``.
With ``with_landmarks`` the original image and its five landmarks are kept as well, for generators that make
their own crop (CUSP's FFHQ-style crop); for aligned crops the landmarks are the template positions.
A photo without a usable face is reported in the skipped list, never fatal. An image of exactly 112x112 pixels
is taken as an ArcFace-aligned crop (no detection) by generators that make their own crops.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from agebias.data.records import Problem
from agebias.errors import BadInputFile, UserError
from generators.base import Identity

_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def seed_identities(n: int, start: int = 0) -> list[Identity]:
    """``n`` seed identities ``seed{start:04d}`` ... (EG3D convention: id = seed)."""
    if n < 1:
        raise UserError("--identities must be at least 1")
    return [Identity(id=f"seed{s:04d}", seed=s) for s in range(start, start + n)]


def sanitize_id(stem: str) -> str:
    """A file stem as a folder-safe identity id (letters, digits, ``._-``; starts with a letter or digit)."""
    out = _BAD.sub("_", stem).strip("._-") or "face"
    return out if out[0].isalnum() else "f" + out


def _unique_ids(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for p in paths:
        base = sanitize_id(p.stem)
        n = seen.get(base, 0) + 1
        seen[base] = n
        ids.append(base if n == 1 else f"{base}-{n}")
    return ids


def load_source_identities(folder: str | Path, *, aligned: bool = False, with_landmarks: bool = False,
                           all_faces: bool = False, device: str = "cpu",
                           seed: int = 0) -> tuple[list[Identity], list[Problem]]:
    """Identities from a folder (or one image) of photos; returns (identities, skipped).

    ``all_faces``: every face of a group photo becomes an identity ``<stem>_face<i>`` (left to right); otherwise
    the largest central face is used. Each identity gets a ``seed`` (``seed + 100 * file index + face index``) so
    stochastic editors are reproducible per source.
    """
    from agebias.data.faces import load_aligned_faces
    from agebias.data.sources import open_dataset

    scan = open_dataset(folder, kind="folder")
    skipped = list(scan.problems)
    records = sorted(scan.records, key=lambda r: str(r.path))
    if not records:
        raise UserError(f"no images found in {folder}")
    ids = dict(zip([str(r.path) for r in records], _unique_ids([Path(r.path) for r in records]), strict=True))
    index = {str(r.path): i for i, r in enumerate(records)}
    identities: list[Identity] = []

    def make_id(key: str, face: int | None) -> tuple[str, int]:
        base_seed = seed + 100 * index[key]
        return (ids[key], base_seed) if face is None else (f"{ids[key]}_face{face}", base_seed + face)

    if not with_landmarks:
        faces = load_aligned_faces(records, detector="none" if aligned else "mtcnn", aligned=aligned,
                                   all_faces=all_faces and not aligned, device=device, progress="aligning sources")
        skipped.extend(faces.skipped)
        for record, crop in zip(faces.records, faces.crops, strict=True):
            key = str(record.path)
            face = int(record.extra["face"]) if all_faces and "face" in record.extra else None
            ident_id, ident_seed = make_id(key, face)
            identities.append(Identity(id=ident_id, seed=ident_seed, image=np.ascontiguousarray(crop), source=key))
        return identities, skipped
    from agebias.data.align import align_face
    from agebias.progress import track

    for record in track(records, "aligning sources", total=len(records), unit="img"):
        key = str(record.path)
        try:
            original, found = _original_and_landmarks(Path(record.path), aligned, device, all_faces)
        except BadInputFile as err:
            skipped.append(Problem(key, err.reason))
            continue
        is_crop = _is_crop(original, aligned)
        for face, landmarks in enumerate(found):
            ident_id, ident_seed = make_id(key, face if all_faces and not is_crop else None)
            crop = original if is_crop and original.shape[:2] == (112, 112) else align_face(original, landmarks, 112)
            identities.append(Identity(id=ident_id, seed=ident_seed, image=np.ascontiguousarray(crop),
                                       source=key, landmarks=landmarks, original=original))
    return identities, skipped


def _is_crop(image: np.ndarray, aligned: bool) -> bool:
    """Already an aligned crop: ``aligned`` was given, or the image is exactly 112x112 (the ArcFace crop size)."""
    return aligned or image.shape[:2] == (112, 112)


def _original_and_landmarks(path: Path, aligned: bool, device: str, all_faces: bool = False):
    """The photo and the landmarks of its face (or of every face, left to right, with ``all_faces``)."""
    from agebias.data.align import ARCFACE_TEMPLATE
    from agebias.data.images import load_image

    image = load_image(path)
    if _is_crop(image, aligned):
        h, w = image.shape[:2]
        found = [ARCFACE_TEMPLATE.astype(np.float64) * np.array([w / 112.0, h / 112.0])]
    else:
        from agebias.data.detect import detect_faces, pick_main_face

        dets = detect_faces(image, device=device)
        if not dets:
            raise BadInputFile(path, "no face found")
        if all_faces:
            dets = sorted(dets, key=lambda d: (d.box[0], d.box[1]))
        else:
            dets = [pick_main_face(dets, image.shape)]
        found = [d.landmarks for d in dets]
    return image, [tuple((float(x), float(y)) for x, y in np.asarray(p).reshape(5, 2)) for p in found]
