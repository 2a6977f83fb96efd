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

Alignment: real evaluation and training crops are aligned so that the eyes, nose tip and mouth corners sit on the
ArcFace template. The strain moves those points (age 30 -> 4: mouth corners 11.6 px up, nose 6.9 px, eyes
3.4 px inward), so a warped crop used as it is would carry an age-correlated alignment artefact. The generator
therefore warps the source crop's five landmarks with the same map (:func:`warp_points`) and re-aligns the output
to the template with the similarity transform insightface uses (one resampling: the output grid is mapped back
through the similarity, the strain and, when known, the photo's own alignment). A similarity cannot undo the
strain's change of proportions (a child's lower face shrinks more than its eye spacing), so with the default
strain and a 30-year-old source the five points land within 1 px of the template from age 3 up (0.98 px at 3,
0.86 px at 4, at most 0.19 px from 14 to 100) and within 1.75 px at ages 0-2 (see :func:`aligned_landmarks`).

Head centre: the strain's origin is the centre of the head (Todd et al. measure it on the profile, near the ear
canal). A frontal aligned crop has no such landmark, so we take the eye midpoint raised by a quarter of the
eye-to-mouth distance, (56.0, 41.5) px on the 112x112 ArcFace template, scaled with the crop size: a point
between the eyebrows near the centre of the cranium's outline in frontal view (our choice, not from the papers).
The crown above it barely moves (theta = 0) and the chin below it moves most (theta = pi). When the full photo
and its landmarks are known the warp samples the photo (real neck/background pixels enter the crop); for bare
aligned crops the border is replicated.
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


def warp_points(points, k_source: float, k_target: float, centre: tuple[float, float]) -> np.ndarray:
    """Where the strain change moves (N, 2) points (x, y): ``R -> R (1 + k_tgt (1 - cos theta)) /
    (1 + k_src (1 - cos theta))`` about ``centre``, theta kept (the inverse of the map the image warp samples)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    d = p - np.asarray(centre, dtype=np.float64)
    r = np.hypot(d[:, 0], d[:, 1])
    cos_t = np.where(r > 1e-9, -d[:, 1] / np.maximum(r, 1e-9), 1.0)
    one_minus = 1.0 - cos_t
    return np.asarray(centre) + d * ((1.0 + k_target * one_minus) / (1.0 + k_source * one_minus))[:, None]


def _strain_source(xs: np.ndarray, ys: np.ndarray, k_source: float, k_target: float,
                   centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Inverse map of the strain change: for output positions (xs, ys), where to sample the source (same frame)."""
    cx, cy = centre
    dx, dy = xs - cx, ys - cy
    r = np.hypot(dx, dy)
    cos_t = np.where(r > 1e-9, -dy / np.maximum(r, 1e-9), 1.0)  # theta from the upward vertical (image y is down)
    one_minus = 1.0 - cos_t
    ratio = (1.0 + k_source * one_minus) / (1.0 + k_target * one_minus)
    return cx + dx * ratio, cy + dy * ratio


def realignment(crop_points, k_source: float, k_target: float, size: int) -> np.ndarray:
    """The 2x3 similarity taking the strained crop to the ArcFace template, fitted to where the strain moves the
    crop's five landmarks ``crop_points`` (ArcFace order)."""
    from agebias.data.align import estimate_transform

    return estimate_transform(warp_points(crop_points, k_source, k_target, head_centre(size, size)), size)


def aligned_landmarks(crop_points, k_source: float, k_target: float, size: int = 112) -> np.ndarray:
    """Where the five landmarks end up in the generator's output: strained, then re-aligned to the template."""
    from agebias.data.align import transform_points

    warped = warp_points(crop_points, k_source, k_target, head_centre(size, size))
    return transform_points(realignment(crop_points, k_source, k_target, size), warped)


def _output_grid(size: int, crop_points, k_source: float, k_target: float) -> tuple[np.ndarray, np.ndarray]:
    """For every output pixel, its position in the source crop's frame (re-alignment undone, then the strain)."""
    inv = cv2.invertAffineTransform(realignment(crop_points, k_source, k_target, size))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    px = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    py = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    return _strain_source(px, py, k_source, k_target, head_centre(size, size))


def cardioid_warp(image: np.ndarray, k_source: float, k_target: float, crop_points=None) -> np.ndarray:
    """Re-grow a square aligned crop ``image`` (uint8 S, S, 3) from strain ``k_source`` to ``k_target`` and re-align
    it to the template. ``crop_points``: its five landmarks (default: the template's, as for any aligned crop).

    Pixels pulled from outside the crop are replicated from its border.
    """
    from agebias.data.align import template_for

    size = image.shape[0]
    points = template_for(size) if crop_points is None else crop_points
    map_x, map_y = _output_grid(size, points, k_source, k_target)
    out = cv2.remap(np.ascontiguousarray(image), map_x.astype(np.float32), map_y.astype(np.float32),
                    interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(out, dtype=np.uint8)


def cardioid_warp_from_original(original: np.ndarray, landmarks5, k_source: float, k_target: float,
                                size: int = 112) -> np.ndarray:
    """Strain change applied in the aligned frame but sampled from the full photo (one remap), re-aligned.

    The output is the ArcFace-aligned ``size`` crop of the warped head; content pulled in from below the
    chin or beside the face comes from the photo itself instead of being invented at the crop border.
    """
    from agebias.data.align import estimate_transform, transform_points

    m = estimate_transform(landmarks5, size)  # photo -> crop
    inv = cv2.invertAffineTransform(m)
    map_x, map_y = _output_grid(size, transform_points(m, landmarks5), k_source, k_target)
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
                "realigned": "five landmarks warped with the strain, output re-aligned to the ArcFace template",
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
