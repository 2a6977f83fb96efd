"""Face datasets (FG-NET, manifests, generated sets, AgeDB, .bin verification files), images and alignment.

Main entry points (imported lazily so ``import agebias.data`` stays light):

- ``open_dataset(source, kind="auto") -> DatasetScan`` (:mod:`agebias.data.sources`)
- ``load_aligned_faces(records, detector=..., aligned=..., all_faces=..., cache_dir=...) -> AlignedFaces``
  (:mod:`agebias.data.faces`)
- ``load_image(path) -> uint8 (H, W, 3) RGB`` (:mod:`agebias.data.images`)
- ``align_face(image, landmarks5, size=112)``, ``ARCFACE_TEMPLATE`` (:mod:`agebias.data.align`)
- ``read_bin(path) -> (images, issame)`` (:mod:`agebias.data.verification_bin`)
"""

from __future__ import annotations

import importlib
from typing import Any

from agebias.data.records import DatasetScan, FaceRecord, Problem

_LAZY = {
    "open_dataset": "agebias.data.sources",
    "load_aligned_faces": "agebias.data.faces",
    "AlignedFaces": "agebias.data.faces",
    "load_image": "agebias.data.images",
    "align_face": "agebias.data.align",
    "ARCFACE_TEMPLATE": "agebias.data.align",
    "read_bin": "agebias.data.verification_bin",
}

__all__ = ["DatasetScan", "FaceRecord", "Problem", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agebias.data' has no attribute {name!r}")
