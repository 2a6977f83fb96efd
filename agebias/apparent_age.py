"""Apparent ages of face images: arrays, image files or face records in, one :class:`ApparentAge` per image out.

    rows = estimate_ages(["photo.jpg", crop_array, record])    # rows[i].apparent_age: years, or None
    write_ages_csv(rows, "ages.csv")

Whole photos and aligned 112x112 crops go through the same rule (detector, dlib 5-point chip, the Cydral age
network; see :mod:`agebias.models.age_estimator`). With several faces in an image, the largest central one is
measured (the rule of :func:`agebias.data.detect.pick_main_face`) and ``faces`` says how many were found. An image
with no face, or a file that cannot be read, gives ``apparent_age=None``, ``face_found=False`` and the reason; it
never raises.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np

from agebias.atomic import write_text
from agebias.data.detect import Detection, pick_main_face
from agebias.data.images import load_image
from agebias.data.manifest import rows_to_csv
from agebias.data.records import FaceRecord
from agebias.errors import BadInputFile
from agebias.models.age_estimator import AgeEstimator, default_estimator
from agebias.progress import track

Item = Union[np.ndarray, str, os.PathLike, FaceRecord]
CSV_COLUMNS = ("path", "apparent_age", "face_found", "faces", "age", "reason")


@dataclass
class ApparentAge:
    """One image: ``path`` (``array <i>`` for arrays), ``apparent_age`` in years (None without a face),
    ``face_found``, ``faces`` (how many the detector found), ``age`` (the record's known age, when it has one),
    ``reason`` (why there is no estimate)."""

    path: str
    apparent_age: float | None
    face_found: bool
    faces: int = 0
    age: int | None = None
    reason: str = ""


def estimate_ages(items: Iterable[Item], *, estimator: AgeEstimator | None = None,
                  progress: str | None = "apparent age") -> list[ApparentAge]:
    """Apparent age of the main face of every item, in order (see the module notes)."""
    est = estimator or default_estimator()
    items = list(items)
    rows = []
    for i, item in enumerate(track(items, progress, total=len(items), unit="img") if progress else items):
        rows.append(_one(est, i, item))
    return rows


def _one(est: AgeEstimator, index: int, item: Item) -> ApparentAge:
    age = item.age if isinstance(item, FaceRecord) else None
    if isinstance(item, np.ndarray):
        name, image = f"array {index}", item
    else:
        name = str(item.path if isinstance(item, FaceRecord) else item)
        try:
            image = load_image(name)
        except BadInputFile as err:
            return ApparentAge(name, None, False, age=age, reason=err.reason)
    faces = est.faces(image)
    if not faces:
        return ApparentAge(name, None, False, age=age, reason="no face found")
    dets = [Detection(box=tuple(float(v) for v in f.box), score=1.0, landmarks=f.landmarks) for f in faces]
    main = faces[dets.index(pick_main_face(dets, image.shape))]
    return ApparentAge(name, main.apparent_age, True, faces=len(faces), age=age)


def write_ages_csv(rows: Iterable[ApparentAge], target: str | os.PathLike) -> Path:
    """Write the rows as CSV (columns :data:`CSV_COLUMNS`; ages to 0.001 years; empty cells for unknown values),
    atomically."""
    dicts: list[dict[str, Any]] = []
    for r in rows:
        d = asdict(r)
        d["apparent_age"] = None if r.apparent_age is None else round(r.apparent_age, 3)
        dicts.append(d)
    write_text(target, rows_to_csv(dicts, CSV_COLUMNS))
    return Path(target)
