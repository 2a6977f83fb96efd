"""Records in, aligned 112x112 RGB crops out: ``load_aligned_faces(records, ...) -> AlignedFaces``.

Detectors:

- ``"landmarks"``: the record's five landmarks (e.g. from FG-NET ``.pts`` files); records without them are skipped
  with the reason;
- ``"mtcnn"``: MTCNN finds faces; the largest central one is used (see :mod:`agebias.data.detect`), or every
  face with ``all_faces`` (each becomes its own record with ``extra["face"] = "0", "1", ...``);
- ``"squash"``: no detection, no alignment: the whole image resized to 112x112 exactly as the MSc thesis fed it
  to ArcFace (:mod:`agebias.data.squash`); every image that decodes is used;
- ``"none"`` (or ``aligned=True``): the image must already be a 112x112 aligned crop and passes through as is;
  other sizes are skipped with the reason;
- ``"auto"``: ``"landmarks"`` for records that carry landmarks, else ``"mtcnn"`` (``"none"`` when ``aligned``).

No face found, unreadable files and the like go to ``skipped`` with their reason; nothing is dropped silently.
Squashed crops are not cached (they cost one resize).

Cache: crops are stored as PNG under ``cache_dir`` (default ``$AGEBIAS_CACHE/aligned``, where ``AGEBIAS_CACHE``
defaults to ``~/.cache/agebias``), keyed by SHA-256 of the image bytes plus the settings (detector, all_faces,
landmarks, template, size). With ``all_faces`` the cached PNG is a vertical strip of the crops. Writes are atomic.
``cache_dir=False`` turns the cache off. Landmarks in records refer to the stored pixels before EXIF rotation.
"""

from __future__ import annotations

import hashlib
import logging
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from agebias.data.align import ARCFACE_TEMPLATE, align_face
from agebias.data.images import decode_image, encode_png
from agebias.data.records import FaceRecord, Problem
from agebias.errors import BadInputFile, UserError
from agebias.progress import track

log = logging.getLogger(__name__)

DETECTORS = ("auto", "mtcnn", "landmarks", "squash", "none")
CROP_SIZE = 112
_CACHE_VERSION = 2  # 2: landmark crops of EXIF-rotated files use the stored pixels


@dataclass
class AlignedFaces:
    """Aligned crops and the records they belong to (same order), plus every record that was skipped."""

    records: list[FaceRecord]
    crops: np.ndarray  # uint8 (N, 112, 112, 3) RGB
    skipped: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)


def default_cache_dir() -> Path:
    """``$AGEBIAS_CACHE/aligned`` (``AGEBIAS_CACHE`` defaults to ``~/.cache/agebias``)."""
    root = os.environ.get("AGEBIAS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "agebias")
    return Path(root) / "aligned"


def load_aligned_faces(
    records: Iterable[FaceRecord],
    *,
    detector: Literal["auto", "mtcnn", "landmarks", "squash", "none"] = "auto",
    aligned: bool = False,
    all_faces: bool = False,
    cache_dir: str | os.PathLike | None | Literal[False] = None,
    device: str = "cpu",
    progress: str | None = "aligning",
) -> AlignedFaces:
    """Align every record's face to the ArcFace 112x112 template. See the module notes for the rules."""
    if detector not in DETECTORS:
        raise UserError(f"unknown detector {detector!r}; choose from {', '.join(DETECTORS)}")
    if aligned and detector not in ("auto", "none"):
        raise UserError(f"--aligned means the images are already aligned crops; it cannot be combined with "
                        f"detector {detector!r}")
    records = list(records)
    cache = None if cache_dir is False else Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out_records: list[FaceRecord] = []
    crops: list[np.ndarray] = []
    skipped: list[Problem] = []
    items = track(records, progress, total=len(records), unit="img") if progress else records
    for record in items:
        try:
            faces = align_record(record, detector="none" if aligned else detector, all_faces=all_faces,
                                 cache_dir=cache, device=device)
        except BadInputFile as err:
            skipped.append(Problem(str(record.path), err.reason))
            continue
        extra = {**record.extra, "prepared": preparation_of(record, detector, aligned)}
        if all_faces:
            for i, crop in enumerate(faces):
                out_records.append(record.with_(extra={**extra, "face": str(i)}))
                crops.append(crop)
        else:
            out_records.append(record.with_(extra=extra))
            crops.append(faces[0])
    arr = np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    return AlignedFaces(records=out_records, crops=arr, skipped=skipped)


def use_as_aligned(data_aligned: bool | None, setting: bool | None) -> bool:
    """Whether images are used as given: the user's setting when made (warned when it contradicts the data),
    else what the data says (unknown: detect and align)."""
    if setting is None:
        return bool(data_aligned)
    if data_aligned is True and setting is False:
        log.warning("these images are 112x112 crops that agebias generated already aligned (generation.json); "
                    "re-detecting and re-aligning them changes every score. Leave --aligned unset to use them as "
                    "given")
    elif data_aligned is False and setting is True:
        log.warning("the data says these images are not aligned 112x112 crops, but --aligned uses them as given")
    return setting


def preparation_of(record: FaceRecord, detector: str, aligned: bool) -> str:
    """How a record's face is prepared: ``as given`` (an aligned crop), ``landmarks``, ``mtcnn`` or ``squash``."""
    if aligned or detector == "none":
        return "as given"
    if detector == "squash":
        return "squash"
    if detector == "landmarks" or (detector == "auto" and record.landmarks is not None):
        return "landmarks"
    return detector if detector != "auto" else "mtcnn"


def align_record(record: FaceRecord, *, detector: str = "auto", all_faces: bool = False,
                 cache_dir: Path | None = None, device: str = "cpu") -> list[np.ndarray]:
    """Aligned crop(s) for one record (one unless ``all_faces``). Raises ``BadInputFile`` with the reason."""
    try:
        data = Path(record.path).read_bytes()
    except FileNotFoundError:
        raise BadInputFile(record.path, "file not found") from None
    except OSError as err:
        raise BadInputFile(record.path, f"cannot read file ({err.strerror or err})") from None
    if detector == "squash":
        from agebias.data.squash import squash_file

        return [squash_file(data, str(record.path))]
    if detector == "auto":
        detector = "landmarks" if record.landmarks is not None else "mtcnn"
    if detector == "none":
        image = decode_image(data, str(record.path))
        if image.shape[:2] != (CROP_SIZE, CROP_SIZE):
            raise BadInputFile(record.path, f"not an aligned {CROP_SIZE}x{CROP_SIZE} crop "
                                            f"({image.shape[1]}x{image.shape[0]}); align it with a detector")
        return [image]
    if detector == "landmarks" and record.landmarks is None:
        raise BadInputFile(record.path, "no landmarks for this image (use --detector mtcnn)")
    key = _cache_key(data, detector, all_faces, record.landmarks if detector == "landmarks" else None)
    cached = _cache_read(cache_dir, key)
    if cached is not None:
        return cached
    # landmarks (e.g. FG-NET .pts) are in stored-pixel coordinates: do not apply the EXIF rotation for them
    image = decode_image(data, str(record.path), exif_transpose=detector != "landmarks")
    if detector == "landmarks":
        try:
            crops = [align_face(image, np.asarray(record.landmarks, dtype=np.float64), CROP_SIZE)]
        except ValueError as err:
            raise BadInputFile(record.path, f"bad landmarks ({err})") from None
    else:
        from agebias.data.detect import detect_faces, pick_main_face

        detections = detect_faces(image, device=device)
        if not detections:
            raise BadInputFile(record.path, "no face found")
        if all_faces:
            detections = sorted(detections, key=lambda d: (d.box[0], d.box[1]))  # left to right
        else:
            detections = [pick_main_face(detections, image.shape)]
        crops = [align_face(image, d.landmarks, CROP_SIZE) for d in detections]
    _cache_write(cache_dir, key, crops)
    return crops


def _cache_key(data: bytes, detector: str, all_faces: bool, landmarks) -> str:
    settings = {"v": _CACHE_VERSION, "detector": detector, "all_faces": bool(all_faces), "size": CROP_SIZE,
                "template": np.round(ARCFACE_TEMPLATE, 4).tolist(),
                "landmarks": None if landmarks is None else np.round(np.asarray(landmarks, float), 3).tolist()}
    h = hashlib.sha256(data)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.png"


def _cache_read(cache_dir: Path | None, key: str) -> list[np.ndarray] | None:
    if cache_dir is None:
        return None
    path = _cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        strip = decode_image(path.read_bytes(), str(path))
    except (BadInputFile, OSError):
        return None  # a damaged cache entry is recomputed
    if strip.shape[1] != CROP_SIZE or strip.shape[0] % CROP_SIZE:
        return None
    return [np.ascontiguousarray(strip[i:i + CROP_SIZE]) for i in range(0, strip.shape[0], CROP_SIZE)]


def _cache_write(cache_dir: Path | None, key: str, crops: list[np.ndarray]) -> None:
    if cache_dir is None or not crops:
        return
    from agebias.atomic import write_bytes

    try:
        write_bytes(_cache_path(cache_dir, key), encode_png(np.concatenate(crops, axis=0)))
    except OSError:
        pass  # a read-only or full cache must not fail the run


__all__ = ["AlignedFaces", "DETECTORS", "align_record", "default_cache_dir", "load_aligned_faces"]
