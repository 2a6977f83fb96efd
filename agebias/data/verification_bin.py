"""insightface ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW) read through a restricted unpickler.

File content: a pickle of ``(bins, issame_list)``; ``bins`` holds 2N encoded JPEG/PNG byte strings (pair i is
entries 2i and 2i+1), ``issame_list`` N booleans. Files written by Python 2 need ``encoding="bytes"``.

Pickles can run arbitrary code, so :class:`RestrictedUnpickler` admits only the plain types the format needs
(bytes, str, numbers, bools, None, lists, tuples, dicts) and numpy arrays/scalars, through exactly these
globals: numpy's ``_reconstruct``/``scalar`` (``numpy.core.multiarray`` or ``numpy._core.multiarray``),
``numpy.ndarray``, ``numpy.dtype``, and ``_codecs.encode`` (how protocol-2 pickles from Python 3 spell bytes).
Anything else raises ``UserError`` before it is ever called.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from agebias.data.images import decode_image
from agebias.errors import BadInputFile, UserError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_ALLOWED``; anything else is refused with ``UserError``."""

    def find_class(self, module: str, name: str):  # noqa: D102 - documented in the class
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UserError(f"refusing to load {module}.{name} from a .bin file: only bytes, str, numbers, bools, "
                        "lists, tuples and numpy arrays are allowed (the file may be hostile or not a .bin set)")


def restricted_loads(data: bytes) -> object:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` and ``encoding="bytes"``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or foreign pickle fails with many exception types
        raise UserError(f"not a readable .bin pickle ({type(err).__name__}: {err})") from None


def read_bin(path: str | os.PathLike, decode: bool = True) -> tuple[list, list[bool]]:
    """Read a ``.bin`` set: ``(images, issame)``.

    ``images`` are uint8 (H, W, 3) RGB arrays when ``decode`` (else the encoded bytes; decode them one by one with
    :func:`decode_bin_image`); ``issame`` has one bool per consecutive pair. Raises ``UserError`` for a missing,
    hostile or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f".bin file {path} not found (see datasets/README.md)")
    obj = restricted_loads(path.read_bytes())
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise UserError(f"{path}: expected a pickle of (bins, issame_list), got {type(obj).__name__}")
    bins, issame = obj
    bins = list(bins)
    issame_list = [bool(v) for v in (issame.tolist() if isinstance(issame, np.ndarray) else issame)]
    if len(bins) != 2 * len(issame_list):
        raise UserError(f"{path}: {len(bins)} images for {len(issame_list)} pairs (need exactly 2 per pair)")
    if not decode:
        return [_as_bytes(b) if not _is_decoded(b) else b for b in bins], issame_list
    images = []
    for i, b in enumerate(bins):
        try:
            images.append(decode_bin_image(b, name=f"{path}[{i}]"))
        except BadInputFile as err:
            raise UserError(f"{path}: image {i} (pair {i // 2}) cannot be decoded: {err.reason}") from None
    return images, issame_list


def decode_bin_image(item: object, name: str = "<bin>") -> np.ndarray:
    """One ``bins`` entry (encoded bytes, a uint8 byte array, or an already decoded HxWx3 array) as uint8 RGB."""
    if _is_decoded(item):
        return np.ascontiguousarray(item, dtype=np.uint8)
    return decode_image(_as_bytes(item), name)


def _is_decoded(item: object) -> bool:
    return isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[2] == 3


def _as_bytes(item: object) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    if isinstance(item, str):  # a Python 2 str decoded as latin-1
        return item.encode("latin-1")
    raise UserError(f"unexpected entry of type {type(item).__name__} in a .bin file")
