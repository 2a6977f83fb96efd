"""Real face photos that ship inside installed packages: the embedded demo's source identities.

No face dataset can be downloaded at run time, but a few photos travel inside wheels we install anyway:
insightface's group photo ``t1.jpg`` (6 people) and its aligned ``Tom_Hanks_54745.png``, scikit-image's
``astronaut.png`` (Eileen Collins) and matplotlib's ``grace_hopper.jpg``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from agebias.errors import DataError


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    return path if path.is_file() else None


def package_photo_paths() -> dict[str, Path]:
    """Name -> path of every package-shipped face photo found in this environment."""
    candidates = {
        "insightface_t1": ("insightface", "data", "images", "t1.jpg"),
        "insightface_tom_hanks": ("insightface", "data", "images", "Tom_Hanks_54745.png"),
        "skimage_astronaut": ("skimage", "data", "astronaut.png"),
        "matplotlib_grace_hopper": ("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
    }
    found = {}
    for name, (package, *parts) in candidates.items():
        path = _package_file(package, *parts)
        if path is not None:
            found[name] = path
    return found


def copy_package_photos(dest: str | os.PathLike) -> Path:
    """Copy the package photos into the folder ``dest`` (named ``<name><ext>``) and return the folder."""
    photos = package_photo_paths()
    if not photos:
        raise DataError("no face photos found in installed packages (install agebias[demo] and insightface)")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in sorted(photos.items()):
        target = dest / f"{name}{src.suffix.lower()}"
        if not target.exists():
            shutil.copyfile(src, target)
    return dest
