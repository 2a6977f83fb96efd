"""One entry point for every face source: ``open_dataset(source, kind="auto") -> DatasetScan``.

Kinds: ``fgnet`` (FG-NET, either layout), ``manifest`` (a CSV file with path,subject,age), ``generated``
(``<id>/<id>_<age>.png`` + ``manifest.csv``), ``agedb`` (AgeDB names), ``folder`` (any images; subject = parent
folder, age unknown). ``auto`` picks, in order: a ``.csv`` file -> manifest; a single image file -> folder;
a folder whose ``manifest.csv`` has an ``id`` column -> generated; one whose ``manifest.csv`` has a ``path``
column -> manifest; mostly FG-NET names -> fgnet; the generated layout alone -> generated; AgeDB names ->
agedb; else folder. (``.bin`` verification files are pairs, not records: read them with
``agebias.data.verification_bin.read_bin``.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from agebias.data.agedb import looks_like_agedb, scan_agedb
from agebias.data.fgnet import FGNET_HELP, looks_like_fgnet, scan_fgnet
from agebias.data.folder import scan_folder
from agebias.data.generated import MANIFEST_NAME, looks_like_generated, manifest_header, scan_generated
from agebias.data.images import is_image_name
from agebias.data.manifest import read_manifest
from agebias.data.records import DatasetScan
from agebias.errors import UserError

KINDS: dict[str, Callable[[Path, bool], DatasetScan]] = {
    "fgnet": lambda p, check: scan_fgnet(p),
    "manifest": lambda p, check: read_manifest(p / MANIFEST_NAME if p.is_dir() else p, check_files=check),
    "generated": lambda p, check: scan_generated(p, check_files=check),
    "agedb": lambda p, check: scan_agedb(p),
    "folder": lambda p, check: scan_folder(p),
}


def detect_kind(source: str | os.PathLike) -> str:
    """The kind ``open_dataset(kind="auto")`` would use for ``source`` (see the module notes)."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path} not found")
    if path.is_file():
        if path.suffix.lower() == ".csv":  # a generated set's own manifest (id column) names the generated set
            header = manifest_header(path.parent, path.name)
            return "generated" if "id" in header and "subject" not in header else "manifest"
        if path.suffix.lower() == ".bin":
            raise UserError(f"{path} is a .bin verification file (pairs); evaluate it as a .bin set, not a dataset")
        if is_image_name(path.name):
            return "folder"
        raise UserError(f"{path}: not a dataset (expected a folder, a .csv manifest or an image)")
    header = manifest_header(path)
    if "id" in header:
        return "generated"
    if "path" in header:
        return "manifest"
    if looks_like_fgnet(path):
        return "fgnet"
    if looks_like_generated(path):
        return "generated"
    if looks_like_agedb(path):
        return "agedb"
    return "folder"


def open_dataset(source: str | os.PathLike, kind: str = "auto", check_files: bool = True) -> DatasetScan:
    """Scan ``source`` as ``kind`` and return its records and problems. Raises ``UserError`` for a missing
    source or an unknown kind. ``check_files=False``: a manifest's (or generated set's) paths are only keys, the
    images need not exist (evaluating precomputed embeddings)."""
    kind = (kind or "auto").lower()
    path = Path(source).expanduser()
    if kind not in KINDS and kind != "auto":
        raise UserError(f"unknown dataset kind {kind!r}; choose from auto, {', '.join(KINDS)}")
    if not path.exists():
        raise UserError(f"{path} not found" + (f". {FGNET_HELP}" if kind == "fgnet" else ""))
    if kind == "auto":
        kind = detect_kind(path)
    if kind == "generated" and path.is_file():  # <root>/manifest.csv stands for <root>
        path = path.parent
    return KINDS[kind](path, check_files)
