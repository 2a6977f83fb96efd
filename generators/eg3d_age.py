"""``eg3d``: EG3D-Age (github johndoe133/eg3d-age), a 3D-aware GAN with age appended to its conditioning.

Identity = seed: ``z = RandomState(seed).randn(1, G.z_dim)``. Conditioning ``c`` = 16 cam2world values + 9
normalised intrinsics + the age code, used for both ``G.mapping`` and ``G.synthesis`` (frontal view):

- camera: EG3D's ``LookAtPoseSampler.sample(pi/2, pi/2, pivot, radius)``: a camera on the +z axis looking at
  ``pivot``, where ``pivot = G.rendering_kwargs['avg_camera_pivot']`` (default (0, 0, 0); (0, 0, 0.2) in the FFHQ
  models) and ``radius = G.rendering_kwargs['avg_camera_radius']`` (default 2.7); y up, no roll;
- intrinsics: ``FOV_to_intrinsics(18.837)``: ``f = 1 / (tan(fov/2) * 1.414)``, ``[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]``;
- age: read from the checkpoint's ``training_options.json`` (beside the pickle, or ``training_options=PATH``):
  scalar models get ``2 (age - age_min) / (age_max - age_min) - 1`` (rounded to 4 decimals as upstream);
  categorical models (``categories`` = bin edges in years) get a one-hot over the bins
  (``edges[i] <= age < edges[i+1]``, the last bin inclusive); a 101-wide age code is a one-hot of the whole
  age 0..100. Without the file the age range 0-100 (scalar) is assumed, a warning is printed and recorded.

``ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)`` with ``cutoff=None`` meaning *all layers*
(cutoff 0 would disable truncation entirely, as the MSc thesis pipeline did by mistake: that value is accepted
but warned about); ``G.synthesis(ws, c, noise_mode=...)['image']`` in [-1, 1] -> uint8 by ``x * 127.5 + 128``.
``align=True`` re-aligns each 512 px output to the ArcFace 112x112 template with MTCNN (data API).
The pickle needs the checkout's ``dnnlib``/``torch_utils``/``legacy`` and ``trust_checkpoint``.
"""

from __future__ import annotations

import logging
import json
import math
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from agebias.errors import UserError
from generators.ages import AgesArg, ages_for
from generators.base import Generator, Identity, Sample, to_uint8_image
from generators.checkout import (doctor_rows, find_code_dir, file_sha256, import_from_checkout, pick_device,
                                 require_checkpoint)

log = logging.getLogger(__name__)

FOV_DEG = 18.837
CAM_RADIUS = 2.7
CHECKOUT_NAME = "eg3d-age"


def fov_to_intrinsics(fov_deg: float = FOV_DEG) -> np.ndarray:
    """EG3D's normalised intrinsics (3x3), with its own constants (3.14159, 1.414)."""
    f = 1.0 / (math.tan(fov_deg * 3.14159 / 360.0) * 1.414)
    return np.array([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=np.float64)


def look_at_cam2world(horizontal: float = math.pi / 2, vertical: float = math.pi / 2,
                      pivot: Iterable[float] = (0.0, 0.0, 0.0), radius: float = CAM_RADIUS) -> np.ndarray:
    """EG3D ``LookAtPoseSampler.sample`` without noise: 4x4 cam2world (y up, camera looks at ``pivot``)."""
    pivot = np.asarray(list(pivot), dtype=np.float64)
    v = min(max(vertical, 1e-5), math.pi - 1e-5) / math.pi
    phi = math.acos(1 - 2 * v)
    theta = horizontal
    origin = np.array([radius * math.sin(phi) * math.cos(math.pi - theta),
                       radius * math.cos(phi),
                       radius * math.sin(phi) * math.sin(math.pi - theta)])
    forward = pivot - origin
    forward /= np.linalg.norm(forward)
    up = np.array([0.0, 1.0, 0.0])
    right = -np.cross(up, forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, up, forward], axis=-1)
    m[:3, 3] = origin
    return m


def read_training_options(checkpoint: Path, explicit: str | Path | None = None) -> tuple[dict[str, Any] | None, Path | None]:
    """``training_options.json`` beside the checkpoint (or ``explicit``); (None, None) when absent."""
    candidates = [Path(explicit)] if explicit else [checkpoint.parent / "training_options.json",
                                                    checkpoint.with_name(checkpoint.stem + "_training_options.json")]
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text()), path
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: not valid JSON ({err})") from None
    if explicit:
        raise UserError(f"training options {explicit} not found")
    return None, None


class AgeCode:
    """Turns an age in years into EG3D-Age's conditioning entries (scalar or one-hot)."""

    def __init__(self, width: int, options: dict[str, Any] | None):
        opts = options or {}
        self.width = int(width)
        self.age_min = float(opts.get("age_min", 0))
        self.age_max = float(opts.get("age_max", 100))
        cats = opts.get("categories")
        self.categories = [float(c) for c in cats] if cats and len(cats) > 1 else None
        if self.width == 1:
            self.kind = "scalar"
            if self.age_max <= self.age_min:
                raise UserError(f"eg3d: training options age_min {self.age_min} >= age_max {self.age_max}")
            self.range = (int(math.ceil(self.age_min)), int(math.floor(self.age_max)))
        elif self.categories is not None:
            if len(self.categories) - 1 != self.width:
                raise UserError(f"eg3d: training options list {len(self.categories) - 1} age categories but the "
                                f"network's age code has {self.width} entries")
            self.kind = "categories"
            self.range = (int(math.ceil(self.categories[0])), int(math.floor(self.categories[-1])))
        elif self.width == 101:
            self.kind = "onehot101"
            self.range = (0, 100)
        else:
            raise UserError(f"eg3d: the network's age code has {self.width} entries but training_options.json gives "
                            f"no matching 'categories'")

    def __call__(self, age: float) -> np.ndarray:
        if self.kind == "scalar":
            z = (age - self.age_min) / (self.age_max - self.age_min) * 2.0 - 1.0
            return np.array([round(z, 4)], dtype=np.float64)
        vec = np.zeros(self.width, dtype=np.float64)
        if self.kind == "onehot101":
            vec[int(round(age))] = 1.0
            return vec
        edges = self.categories
        idx = int(np.searchsorted(edges, age, side="right") - 1)
        vec[min(max(idx, 0), self.width - 1)] = 1.0
        return vec

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"age_code": self.kind, "age_min": self.age_min, "age_max": self.age_max}
        if self.categories:
            d["categories"] = self.categories
        return d


class EG3DAgeGenerator(Generator):
    """EG3D-Age adapter: seeds in, frontal age-conditioned renders out."""

    name = "eg3d"
    needs = "seeds"
    description = "EG3D-Age 3D-aware GAN (needs the eg3d-age checkout and a network pickle; CUDA advised)"

    def __init__(self, checkpoint: str | Path | None = None, repo: str | Path | None = None,
                 trust_checkpoint: bool = False, truncation_psi: float = 0.7, truncation_cutoff: int | None = None,
                 device: str | None = None, batch_size: int = 4, training_options: str | Path | None = None,
                 fov_deg: float = FOV_DEG, noise_mode: str = "const", align: bool = False) -> None:
        self.checkpoint = require_checkpoint("eg3d", checkpoint, True, "an EG3D-Age network pickle (G_ema)")
        self.code_dir = find_code_dir(CHECKOUT_NAME, repo, subdirs=("eg3d", ""))
        require_checkpoint("eg3d", self.checkpoint, bool(trust_checkpoint), "an EG3D-Age network pickle (G_ema)")
        self.truncation_psi = float(truncation_psi)
        self.truncation_cutoff = None if truncation_cutoff is None else int(truncation_cutoff)
        self._warnings: list[str] = []
        if self.truncation_cutoff == 0:
            self._warn("truncation_cutoff 0 disables truncation entirely (the MSc thesis pipeline did this by "
                       "mistake); use None for all layers")
        self.device_request = device
        self.batch_size = max(1, int(batch_size))
        self.fov_deg = float(fov_deg)
        self.noise_mode = noise_mode
        self.align = bool(align)
        self.options, self.options_path = read_training_options(self.checkpoint, training_options)
        if self.options is None:
            self._warn(f"training_options.json not found beside {self.checkpoint.name}: assuming scalar age "
                       f"conditioning over 0-100; outputs may not match the intended ages")
        self.age_range = self._declared_range()
        self.G = None
        self.device = None
        self.age_code: AgeCode | None = None

    # --- setup ------------------------------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        self._warnings.append(msg)
        log.warning(f"{msg}")

    def _declared_range(self) -> tuple[int, int]:
        opts = self.options or {}
        cats = opts.get("categories")
        if cats and len(cats) > 1:
            return int(math.ceil(cats[0])), int(math.floor(cats[-1]))
        return int(opts.get("age_min", 0)), int(opts.get("age_max", 100))

    def load(self) -> "EG3DAgeGenerator":
        """Load ``G_ema`` through the checkout's ``legacy.load_network_pkl`` (runs pickled code: trusted only)."""
        if self.G is not None:
            return self
        import torch

        self.device = pick_device(self.device_request)
        if self.device == "cpu":
            log.info("eg3d: running on CPU (very slow; CUDA strongly advised)")
        import_from_checkout(self.code_dir, "dnnlib")
        legacy = import_from_checkout(self.code_dir, "legacy")
        with open(self.checkpoint, "rb") as fh:
            data = legacy.load_network_pkl(fh)
        if not isinstance(data, dict) or "G_ema" not in data:
            raise UserError(f"eg3d: {self.checkpoint} holds no 'G_ema' network")
        G = data["G_ema"]
        for attr in ("z_dim", "c_dim", "mapping", "synthesis"):
            if not hasattr(G, attr):
                raise UserError(f"eg3d: the pickled G_ema has no '{attr}' (not an EG3D generator?)")
        self.G = G.to(self.device).eval().requires_grad_(False)
        width = int(G.c_dim) - 25
        if width < 1:
            raise UserError(f"eg3d: the network's conditioning has {G.c_dim} entries (25 camera + age expected); "
                            f"this is plain EG3D, not EG3D-Age")
        self.age_code = AgeCode(width, self.options)
        self.age_range = self.age_code.range
        self._torch = torch
        return self

    def parameters(self) -> dict[str, Any]:
        if not getattr(self, "_ckpt_sha", None):
            self._ckpt_sha = file_sha256(self.checkpoint)
        p = {"checkpoint": str(self.checkpoint), "checkpoint_sha256": self._ckpt_sha, "truncation_psi": self.truncation_psi,
             "truncation_cutoff": self.truncation_cutoff, "fov_deg": self.fov_deg, "noise_mode": self.noise_mode,
             "align_112": self.align, "training_options": str(self.options_path) if self.options_path else None,
             "pose": "frontal"}
        p.update({k: v for k, v in (self.options or {}).items() if k in ("age_min", "age_max", "categories")})
        return p

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def check_ages(self, ages) -> None:
        super().check_ages(ages)

    def conditioning(self, age: float) -> np.ndarray:
        """The full conditioning vector (25 camera entries + age code) for a frontal view at ``age``."""
        rk = getattr(self.G, "rendering_kwargs", None) or {}
        cam = look_at_cam2world(math.pi / 2, math.pi / 2, rk.get("avg_camera_pivot", [0, 0, 0]),
                                rk.get("avg_camera_radius", CAM_RADIUS))
        return np.concatenate([cam.reshape(16), fov_to_intrinsics(self.fov_deg).reshape(9), self.age_code(age)])

    # --- generation -------------------------------------------------------------------------------------
    def __call__(self, identities: Iterable[Identity], ages: AgesArg) -> Iterator[Sample]:
        self.load()
        torch = self._torch
        jobs = [(ident, int(a)) for ident in identities for a in ages_for(ages, ident.id)]
        self.check_ages(sorted({a for _, a in jobs}))
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            z = np.concatenate([np.random.RandomState(ident.seed).randn(1, self.G.z_dim) for ident, _ in chunk])
            c = np.stack([self.conditioning(a) for _, a in chunk])
            z_t = torch.from_numpy(z).float().to(self.device)
            c_t = torch.from_numpy(c).float().to(self.device)
            with torch.no_grad():
                ws = self.G.mapping(z_t, c_t, truncation_psi=self.truncation_psi,
                                    truncation_cutoff=self.truncation_cutoff)
                img = self.G.synthesis(ws, c_t, noise_mode=self.noise_mode)["image"]
            for k, (ident, age) in enumerate(chunk):
                image = to_uint8_image(img[k:k + 1])
                info_d = {"seed": ident.seed, "age_code": [round(float(v), 4) for v in self.age_code(age)]
                          if self.age_code.kind == "scalar" else int(np.argmax(self.age_code(age)))}
                if self.align:
                    image = self._align(image)
                    if image is None:
                        info_d["error"] = "no face found in the generated image (alignment to 112x112)"
                yield Sample(ident, age, image, info_d)

    def _align(self, image: np.ndarray) -> np.ndarray | None:
        from agebias.data.align import align_face
        from agebias.data.detect import detect_faces, pick_main_face

        det = pick_main_face(detect_faces(image), image.shape)
        return None if det is None else align_face(image, det.landmarks, 112)

    def close(self) -> None:
        self.G = None

    @classmethod
    def doctor(cls, repo=None, checkpoint=None, **_: Any) -> list[tuple[str, bool, str]]:
        rows, _code = doctor_rows(CHECKOUT_NAME, repo, checkpoint, ("eg3d", ""),
                                  "pass --checkpoint NET.pkl (EG3D-Age G_ema) and --trust-checkpoint")
        return rows
