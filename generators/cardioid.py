"""``cardioid``: the weight-free default generator. Craniofacial growth by cardioidal strain, applied to aligned
real faces as a smooth geometric warp. **Geometry only**: it changes head and face *shape* (the proportions of
cranium to lower face), not skin texture, wrinkles, hair or colouring, and it says so in every manifest row.

Model (Pittenger & Shaw 1975; Todd, Mark, Shaw & Pittenger 1980; used for young-face age progression by
Ramanathan & Chellappa, CVPR 2006): in polar coordinates (R, theta) about the head's centre, theta measured from
the upward vertical, growth maps ``R' = R (1 + k (1 - cos theta)), theta' = theta``. The crown (theta = 0) stays,
the chin region (theta = pi) grows by ``1 + 2k``; a larger k is an older-looking head.

Age -> strain (our documented choice, not a fitted model): ``k(age) = k_adult * g(age)`` with the growth fraction
``g(age) = min(age, 18) / 18) ** 0.6`` (0 at birth, 1 at 18: fast early growth, slowing through adolescence), plus
an optional small adult drift ``adult_drift * (age - 18) / 50`` for ages over 18 (lower-face lengthening; our
heuristic, default 0.1, set 0 to disable). ``k_adult`` defaults to 0.3, inside the strain range whose perceived-age
ordering Pittenger & Shaw and Todd et al. report. Sources are assumed to be of ``source_age`` (default 30): the
warp first undoes the source's strain and then applies the target's, i.e. in closed form the inverse map is
``R_src = R_out * (1 + k_src (1 - cos theta)) / (1 + k_tgt (1 - cos theta))``, so a child target (k_tgt < k_src)
shrinks the lower face relative to the cranium and an older target enlarges it. Age == source age returns the
source unchanged. Ages must lie in 0-100.

Head centre: on the ArcFace 112x112 template it is the eye midpoint raised by a quarter of the eye-to-mouth
distance, (56.0, 41.5) px, scaled with the crop size. When the full photo and its landmarks are known the warp
samples the photo (real neck/background pixels enter the crop); for bare aligned crops the border is replicated.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from agebias.errors import UserError
from generators.base import Generator, Identity, Sample

ADULT_AGE = 18.0
GROWTH_EXPONENT = 0.6


def growth_fraction(age: float, adult_drift: float = 0.1) -> float:
    """Fraction of adult craniofacial growth at ``age`` years (0 at birth, 1 at 18, + drift after)."""
    a = float(age)
    g = (min(a, ADULT_AGE) / ADULT_AGE) ** GROWTH_EXPONENT
    if a > ADULT_AGE:
        g += adult_drift * (a - ADULT_AGE) / 50.0
    return g


def strain_for_age(age: float, k_adult: float = 0.3, adult_drift: float = 0.1) -> float:
    """Cardioidal strain parameter k at ``age`` years."""
    return k_adult * growth_fraction(age, adult_drift)


def head_centre(size_w: int, size_h: int) -> tuple[float, float]:
    """Head centre (x, y) in pixels for an ArcFace-aligned crop of the given size."""
    return 56.0 * size_w / 112.0, 41.5 * size_h / 112.0


def _strain_maps(h: int, w: int, k_source: float, k_target: float,
                 centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse map of the strain change in output-crop pixel coordinates: (map_x, map_y) float64 (h, w)."""
    cx, cy = centre
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xs - cx, ys - cy
    r = np.hypot(dx, dy)
    cos_t = np.where(r > 1e-9, -dy / np.maximum(r, 1e-9), 1.0)  # theta from the upward vertical (image y is down)
    one_minus = 1.0 - cos_t
    ratio = (1.0 + k_source * one_minus) / (1.0 + k_target * one_minus)
    return cx + dx * ratio, cy + dy * ratio


def cardioid_warp(image: np.ndarray, k_source: float, k_target: float,
                  centre: tuple[float, float] | None = None) -> np.ndarray:
    """Re-grow an aligned crop ``image`` (uint8 H, W, 3) from strain ``k_source`` to ``k_target``.

    Pixels pulled from outside the crop are replicated from its border.
    """
    h, w = image.shape[:2]
    map_x, map_y = _strain_maps(h, w, k_source, k_target, centre or head_centre(w, h))
    out = cv2.remap(np.ascontiguousarray(image), map_x.astype(np.float32), map_y.astype(np.float32),
                    interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out, dtype=np.uint8)


def cardioid_warp_from_original(original: np.ndarray, landmarks5, k_source: float, k_target: float,
                                size: int = 112) -> np.ndarray:
    """Strain change applied in the aligned frame but sampled from the full photo (one remap).

    The output is the ArcFace-aligned ``size`` crop of the warped head; content pulled in from below the
    chin or beside the face comes from the photo itself instead of being invented at the crop border.
    """
    from agebias.data.align import estimate_transform

    m = estimate_transform(landmarks5, size)  # photo -> crop
    inv = cv2.invertAffineTransform(m)
    map_x, map_y = _strain_maps(size, size, k_source, k_target, head_centre(size, size))
    src_x = inv[0, 0] * map_x + inv[0, 1] * map_y + inv[0, 2]
    src_y = inv[1, 0] * map_x + inv[1, 1] * map_y + inv[1, 2]
    out = cv2.remap(np.ascontiguousarray(original), src_x.astype(np.float32), src_y.astype(np.float32),
                    interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out, dtype=np.uint8)


class CardioidGenerator(Generator):
    """Cardioidal-strain age warp of aligned source faces (CPU, no weights)."""

    name = "cardioid"
    needs = "sources"
    wants_landmarks = True  # warp from the full photo when available (real pixels below the chin)
    description = "craniofacial growth by cardioidal strain on real faces (geometry only; no weights)"

    def __init__(self, source_age: float = 30.0, k_adult: float = 0.3, adult_drift: float = 0.1,
                 age_range: tuple[int, int] = (0, 100), device: str | None = None, batch_size: int = 1,
                 **ignored: Any) -> None:
        unknown = {k: v for k, v in ignored.items() if v not in (None, False)}
        if unknown:
            raise UserError(f"cardioid: option(s) not used by this generator: {', '.join(sorted(unknown))}")
        if not 0 <= float(source_age) <= 100:
            raise UserError(f"cardioid: --source-age {source_age} is outside 0-100")
        if not 0 < float(k_adult) < 1:
            raise UserError(f"cardioid: k_adult {k_adult} must be in (0, 1)")
        self.source_age = float(source_age)
        self.k_adult = float(k_adult)
        self.adult_drift = float(adult_drift)
        self.age_range = (int(age_range[0]), int(age_range[1]))
        self.batch_size = batch_size

    def output_aligned(self) -> bool:
        return True

    def parameters(self) -> dict[str, Any]:
        return {"model": "cardioidal strain R'=R(1+k(1-cos theta))", "geometry_only": True,
                "source_age": self.source_age, "k_adult": self.k_adult, "adult_drift": self.adult_drift,
                "growth": f"g=(min(a,18)/18)^{GROWTH_EXPONENT} + drift*(a-18)/50",
                "reference": "Pittenger & Shaw 1975; Todd et al. 1980; Ramanathan & Chellappa 2006"}

    def warnings(self) -> list[str]:
        return ["cardioid changes head/face geometry only (no skin texture, hair or colour ageing)"]

    def generate_one(self, identity: Identity, age: int) -> Sample:
        if identity.image is None:
            raise UserError("cardioid needs source faces (--sources DIR), not seeds")
        k_src = strain_for_age(self.source_age, self.k_adult, self.adult_drift)
        k_tgt = strain_for_age(age, self.k_adult, self.adult_drift)
        if abs(k_src - k_tgt) < 1e-12:
            image = identity.image
        elif identity.original is not None and identity.landmarks is not None:
            image = cardioid_warp_from_original(identity.original, identity.landmarks, k_src, k_tgt,
                                                size=identity.image.shape[0])
        else:
            image = cardioid_warp(identity.image, k_src, k_tgt)
        return Sample(identity, age, image, {"k_source": round(k_src, 5), "k_target": round(k_tgt, 5)})
