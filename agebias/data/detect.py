"""Face detection with five landmarks: MTCNN from facenet-pytorch (its bundled weights, CPU by default).

facenet-pytorch is imported lazily (it pulls in torch) and one detector is shared per process and device.
Landmarks come back in ArcFace order (left eye, right eye, nose tip, left/right mouth corner; image-left first).

Choosing among several faces (:func:`pick_main_face`): the score is ``box area - 2 * (squared distance from
the box centre to the image centre)``, both in pixels^2, the rule insightface's detectors use for
``max_num``; the highest score wins, i.e. the largest face unless a slightly smaller one is much more central.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from agebias.devices import resolve_device
from agebias.errors import UserError

MIN_PROBABILITY = 0.9
"""Detections below this MTCNN face probability are discarded (MTCNN's own stage thresholds are 0.6/0.7/0.7)."""

_lock = threading.Lock()
_detectors: dict[str, object] = {}


@dataclass(frozen=True)
class Detection:
    """One detected face: ``box`` (x1, y1, x2, y2) pixels, ``score`` in [0, 1], ``landmarks`` (5, 2) pixels."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _mtcnn(device: str = "cpu"):
    with _lock:
        if device not in _detectors:
            resolve_device(device)
            try:
                from facenet_pytorch import MTCNN
            except ImportError as err:  # pragma: no cover - depends on the install
                raise UserError("MTCNN needs facenet-pytorch: pip install --no-deps facenet-pytorch==2.6.0 "
                                f"(import failed: {err})") from None
            _detectors[device] = MTCNN(keep_all=True, device=device)
        return _detectors[device]


def detect_faces(image: np.ndarray, device: str = "cpu", min_probability: float = MIN_PROBABILITY) -> list[Detection]:
    """All faces MTCNN finds in a uint8 (H, W, 3) RGB image with probability >= ``min_probability``."""
    import torch

    model = _mtcnn(device)
    with torch.no_grad():
        boxes, probs, points = model.detect(np.ascontiguousarray(image), landmarks=True)
    if boxes is None:
        return []
    out = []
    for box, prob, pts in zip(boxes, probs, points, strict=True):
        if prob is None or not np.isfinite(prob) or prob < min_probability:
            continue
        out.append(Detection(box=tuple(float(v) for v in box), score=float(prob),
                             landmarks=np.asarray(pts, dtype=np.float64).reshape(5, 2)))
    return out


def central_score(det: Detection, image_shape: tuple[int, ...]) -> float:
    """``area - 2 * squared distance of the box centre from the image centre`` (pixels^2)."""
    h, w = image_shape[:2]
    x1, y1, x2, y2 = det.box
    dx, dy = (x1 + x2) / 2 - w / 2, (y1 + y2) / 2 - h / 2
    return det.area - 2.0 * (dx * dx + dy * dy)


def pick_main_face(detections: list[Detection], image_shape: tuple[int, ...]) -> Detection | None:
    """The largest central face (see the module notes), or None when there is none."""
    if not detections:
        return None
    return max(detections, key=lambda d: central_score(d, image_shape))
