"""``eg3d``: EG3D-Age (github johndoe133/eg3d-age), a 3D-aware GAN with age appended to its conditioning, run as
its authors generate (``eg3d/plot_progressive.py --trunc 0.75 --calibrated True``, ``Evaluation/run_evaluation.py``).

Identity = seed: ``z = RandomState(seed).randn(1, G.z_dim)``. Conditioning ``c`` = 16 cam2world values + 9
normalised intrinsics + the age code, used for both ``G.mapping`` and ``G.synthesis`` (frontal view):

- camera: EG3D's ``LookAtPoseSampler.sample(pi/2, pi/2, pivot, radius)``: a camera on the +z axis looking at
  ``pivot``, where ``pivot = G.rendering_kwargs['avg_camera_pivot']`` (default (0, 0, 0); (0, 0, 0.2) in the FFHQ
  models) and ``radius = G.rendering_kwargs['avg_camera_radius']`` (default 2.7); y up, no roll;
- intrinsics: ``FOV_to_intrinsics(18.837)``: ``f = 1 / (tan(fov/2) * 1.414)``,
  ``[[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]]``;
- age: first calibrated, then coded. *Calibration*: ``calibrate-{psi}.npy`` (the authors' ``calibrate_network.py``)
  holds ``(a, b)``, a linear fit ``estimated = a * target + b`` of apparent against target age at truncation psi;
  the age fed is ``(age - b) / a``. The file is found beside the checkpoint (``calibrate-0.75.npy`` for psi 0.75,
  the name formatted as Python prints the float) or given (``calibration=PATH``; ``calibration=none`` turns it off).
  *Code*: read from the checkpoint's ``training_options.json`` (beside the pickle, or ``training_options=PATH``):
  ``age_loss_fn`` ``MSE`` (scalar, one entry) gets ``2 (age - age_min) / (age_max - age_min) - 1`` rounded to 4
  decimals (``age_min``/``age_max`` of the training options; train.py's defaults 0-100, the thesis model 0-75);
  ``CAT`` gets a 101-way one-hot of the age's whole part (0..100, clamped), as upstream's ``l[int(age)] = 1``;
  older runs with ``categories`` (bin edges in years) get a one-hot over the bins (``edges[i] <= age <
  edges[i+1]``). Without the file the scalar range 0-100 is assumed, and a warning is recorded.

The network must be age-conditioned: ``TriPlaneGenerator.mapping`` zeroes ``c`` (age included) when
``rendering_kwargs['c_gen_conditioning_zero']`` is set (train.py ``--gen_pose_cond False``, its default) and
multiplies it by ``rendering_kwargs['c_scale']`` (0 when missing): such networks are refused.

``ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)`` with the authors' defaults psi 0.75 and
cutoff 14 (every layer of the 14-w backbone); cutoff 0 disables truncation entirely (the MSc thesis pipeline did
this by mistake, with age normalised over 0-100 instead of 0-75): accepted but warned about.
``G.synthesis(ws, c, noise_mode=...)['image']`` in [-1, 1] -> uint8 by ``x * 127.5 + 128``. Rendering draws random
depth samples (stratified and importance sampling) from torch's generator, which is seeded from the identity seeds
of each call (in a forked RNG state): with ``batch_size`` 1 (the default) an image depends only on its seed and
age; larger batches are reproducible for the same plan and batch size. ``noise_mode`` is ``const`` (the network's
stored noise; upstream's scripts leave StyleGAN's default ``random``).
``align=True`` re-aligns each 512 px output to the ArcFace 112x112 template with MTCNN (data API).
The pickle needs the checkout's ``dnnlib``/``torch_utils``/``legacy`` and ``trust_checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agebias.errors import ModelError, SettingsError
from generators.ages import AgesArg, ages_for
from generators.base import Generator, Identity, Sample, to_uint8_image
from generators.checkout import doctor_rows, file_sha256, find_code_dir, load_g_ema, pick_device, require_checkpoint

log = logging.getLogger(__name__)

FOV_DEG = 18.837
CAM_RADIUS = 2.7
CHECKOUT_NAME = "eg3d-age"
DEFAULT_PSI = 0.75  # the authors' scripts: --trunc 0.75
DEFAULT_CUTOFF = 14  # plot_progressive.py / run_evaluation.py click default
ONEHOT_WIDTH = 101  # age_loss_fn CAT: ages 0..100
_OFF = ("none", "off", "false", "no")


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


def read_training_options(checkpoint: Path, explicit: str | Path | None = None
                          ) -> tuple[dict[str, Any] | None, Path | None]:
    """``training_options.json`` beside the checkpoint (or ``explicit``); (None, None) when absent."""
    candidates = [Path(explicit)] if explicit else [checkpoint.parent / "training_options.json",
                                                    checkpoint.with_name(checkpoint.stem + "_training_options.json")]
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text()), path
            except json.JSONDecodeError as err:
                raise ModelError(f"eg3d: {path} is not valid JSON ({err})") from None
    if explicit:
        raise SettingsError(f"eg3d: training options {explicit} not found", field="training_options")
    return None, None


def calibration_file(checkpoint: Path, psi: float) -> Path:
    """Where the authors' scripts look for the calibration at truncation ``psi``: ``calibrate-{psi}.npy`` beside
    the checkpoint, ``psi`` printed as a Python float (``calibrate-0.75.npy``, ``calibrate-1.0.npy``)."""
    return checkpoint.parent / f"calibrate-{float(psi)}.npy"


def read_calibration(path: Path) -> tuple[float, float]:
    """``(a, b)`` from a ``calibrate-{psi}.npy`` file (``np.save(path, [a, b])``); ``ModelError`` when unusable."""
    try:
        ab = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ModelError(f"eg3d: cannot read calibration file {path}: {err}") from None
    ab = np.asarray(ab, dtype=np.float64).reshape(-1)
    if ab.shape != (2,) or not np.all(np.isfinite(ab)) or abs(ab[0]) < 1e-9:
        raise ModelError(f"eg3d: calibration file {path} must hold two finite numbers (a, b) with a != 0, "
                         f"got {ab.tolist()[:4]}")
    return float(ab[0]), float(ab[1])


class AgeCode:
    """Turns a target age in years into EG3D-Age's conditioning entries: calibration, then scalar or one-hot."""

    def __init__(self, width: int, options: dict[str, Any] | None, calibration: tuple[float, float] | None = None):
        opts = options or {}
        self.width = int(width)
        self.age_min = float(opts.get("age_min", 0))
        self.age_max = float(opts.get("age_max", 100))
        self.calibration = calibration
        cats = opts.get("categories")
        self.categories = [float(c) for c in cats] if cats and len(cats) > 1 else None
        loss = opts.get("age_loss_fn")
        if loss == "MSE" and self.width != 1:
            raise ModelError(f"eg3d: training options say age_loss_fn MSE (one scalar age entry) but the network's "
                             f"age code has {self.width} entries")
        if loss == "CAT" and self.width == 1:
            raise ModelError("eg3d: training options say age_loss_fn CAT (a 101-way one-hot) but the network's age "
                             "code has 1 entry")
        if self.width == 1:
            self.kind = "scalar"
            if self.age_max <= self.age_min:
                raise ModelError(f"eg3d: training options age_min {self.age_min} >= age_max {self.age_max}")
            self.range = (math.ceil(self.age_min), math.floor(self.age_max))
        elif self.categories is not None:
            if len(self.categories) - 1 != self.width:
                raise ModelError(f"eg3d: training options list {len(self.categories) - 1} age categories but the "
                                 f"network's age code has {self.width} entries")
            self.kind = "categories"
            self.range = (math.ceil(self.categories[0]), math.floor(self.categories[-1]))
        elif self.width == ONEHOT_WIDTH:
            self.kind = "onehot101"  # trained on randint(age_min, age_max + 1)
            self.range = (max(0, math.ceil(self.age_min)), min(ONEHOT_WIDTH - 1, math.floor(self.age_max)))
        else:
            raise ModelError(f"eg3d: the network's age code has {self.width} entries but training_options.json "
                             f"gives no matching 'categories'")

    def fed_age(self, age: float) -> float:
        """The age handed to the code: ``(age - b) / a`` with a calibration, else ``age``."""
        if self.calibration is None:
            return float(age)
        a, b = self.calibration
        return (float(age) - b) / a

    def __call__(self, age: float) -> np.ndarray:
        fed = self.fed_age(age)
        if self.kind == "scalar":
            z = (fed - self.age_min) / (self.age_max - self.age_min) * 2.0 - 1.0
            return np.array([round(z, 4)], dtype=np.float64)
        vec = np.zeros(self.width, dtype=np.float64)
        if self.kind == "onehot101":
            vec[min(max(int(fed), 0), self.width - 1)] = 1.0
            return vec
        idx = int(np.searchsorted(self.categories, fed, side="right") - 1)
        vec[min(max(idx, 0), self.width - 1)] = 1.0
        return vec


def render_seed(seeds: Iterable[int]) -> int:
    """The torch seed of one rendering call: a hash of its identity seeds (63 bits)."""
    text = ",".join(str(int(s)) for s in seeds)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class EG3DAgeGenerator(Generator):
    """EG3D-Age adapter: seeds in, frontal age-conditioned renders out."""

    name = "eg3d"
    needs = "seeds"
    description = "EG3D-Age 3D-aware GAN (needs the eg3d-age checkout and a network pickle; CUDA advised)"

    def __init__(self, checkpoint: str | Path | None = None, repo: str | Path | None = None,
                 trust_checkpoint: bool = False, truncation_psi: float | None = None,
                 truncation_cutoff: int | None = None, calibration: str | Path | bool | None = None,
                 device: str | None = None, batch_size: int = 1, training_options: str | Path | None = None,
                 fov_deg: float = FOV_DEG, noise_mode: str = "const", align: bool = False) -> None:
        self.checkpoint = require_checkpoint("eg3d", checkpoint, True, "an EG3D-Age network pickle (G_ema)")
        self.code_dir = find_code_dir(CHECKOUT_NAME, repo, subdirs=("eg3d", ""))
        require_checkpoint("eg3d", self.checkpoint, bool(trust_checkpoint), "an EG3D-Age network pickle (G_ema)")
        self.truncation_psi = DEFAULT_PSI if truncation_psi is None else float(truncation_psi)
        self.truncation_cutoff = DEFAULT_CUTOFF if truncation_cutoff is None else int(truncation_cutoff)
        if self.truncation_cutoff < 0:
            raise SettingsError(f"eg3d: truncation_cutoff {self.truncation_cutoff} must be 0 or more",
                                field="truncation_cutoff")
        if noise_mode not in ("const", "random", "none"):
            raise SettingsError(f"eg3d: noise_mode {noise_mode!r} must be const, random or none", field="noise_mode")
        self._warnings: list[str] = []
        if self.truncation_cutoff == 0:
            self._warn("truncation_cutoff 0 disables truncation entirely (the MSc thesis pipeline did this by "
                       f"mistake); the authors generate with cutoff {DEFAULT_CUTOFF}")
        self.device_request = device
        self.batch_size = max(1, int(batch_size))
        self.fov_deg = float(fov_deg)
        self.noise_mode = noise_mode
        self.align = bool(align)
        self.options, self.options_path = read_training_options(self.checkpoint, training_options)
        if self.options is None:
            self._warn(f"training_options.json not found beside {self.checkpoint.name}: assuming scalar age "
                       f"conditioning over 0-100; outputs may not match the intended ages")
        self.calibration_path, self.calibration = self._calibration(calibration)
        self.age_range = self._declared_range()
        self.G = None
        self.device = None
        self.age_code: AgeCode | None = None

    # --- setup ------------------------------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        self._warnings.append(msg)  # the writer logs every generator warning once and records it

    def _calibration(self, choice: str | Path | bool | None) -> tuple[Path | None, tuple[float, float] | None]:
        """The calibration file and its (a, b): given, found beside the checkpoint, or none."""
        if choice is False or (isinstance(choice, str) and choice.strip().lower() in _OFF):
            return None, None
        if choice is None or choice is True:
            path = calibration_file(self.checkpoint, self.truncation_psi)
            if not path.is_file():
                if choice is True:
                    raise SettingsError(f"eg3d: no calibration file {path.name} beside {self.checkpoint.name}",
                                        field="calibration")
                self._warn(f"no {path.name} beside {self.checkpoint.name}: target ages are fed uncalibrated (the "
                           f"authors calibrate with eg3d/calibrate_network.py)")
                return None, None
        else:
            path = Path(choice).expanduser()
            if not path.is_file():
                raise SettingsError(f"eg3d: calibration file {path} not found", field="calibration")
        ab = read_calibration(path)
        log.info(f"eg3d: calibration {path.name}: age fed = (age - {ab[1]:.4g}) / {ab[0]:.4g}")
        return path, ab

    def _declared_range(self) -> tuple[int, int]:
        opts = self.options or {}
        cats = opts.get("categories")
        if cats and len(cats) > 1:
            return math.ceil(cats[0]), math.floor(cats[-1])
        return int(opts.get("age_min", 0)), int(opts.get("age_max", 100))

    def load(self) -> EG3DAgeGenerator:
        """Load ``G_ema`` through the checkout's ``legacy.load_network_pkl`` (runs pickled code: trusted only)."""
        if self.G is not None:
            return self
        import torch

        self.device = pick_device(self.device_request)
        if self.device == "cpu":
            log.info("eg3d: running on CPU (very slow; CUDA strongly advised)")
        G = load_g_ema("eg3d", self.code_dir, self.checkpoint,
                       "install the checkout's requirements, eg3d/environment.yml")
        for attr in ("z_dim", "c_dim", "mapping", "synthesis"):
            if not hasattr(G, attr):
                raise ModelError(f"eg3d: the pickled G_ema has no '{attr}' (not an EG3D generator?)")
        check_age_conditioning(G)
        width = int(G.c_dim) - 25
        if width < 1:
            raise ModelError(f"eg3d: the network's conditioning has {G.c_dim} entries (25 camera + age expected); "
                             f"this is plain EG3D, not EG3D-Age")
        self.age_code = AgeCode(width, self.options, self.calibration)
        self.age_range = self.age_code.range
        self.G = G.to(self.device).eval().requires_grad_(False)
        self._torch = torch
        return self

    def parameters(self) -> dict[str, Any]:
        if not getattr(self, "_ckpt_sha", None):
            self._ckpt_sha = file_sha256(self.checkpoint)
        p = {"checkpoint": str(self.checkpoint), "checkpoint_sha256": self._ckpt_sha,
             "truncation_psi": self.truncation_psi, "truncation_cutoff": self.truncation_cutoff,
             "fov_deg": self.fov_deg, "noise_mode": self.noise_mode,
             "align_112": self.align, "training_options": str(self.options_path) if self.options_path else None,
             "pose": "frontal", "calibrated": self.calibration is not None,
             "calibration": str(self.calibration_path) if self.calibration_path else None,
             "calibration_ab": list(self.calibration) if self.calibration else None}
        p.update({k: v for k, v in (self.options or {}).items() if k in ("age_min", "age_max", "categories",
                                                                          "age_loss_fn")})
        return p

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def check_ages(self, ages) -> None:
        """Load the network (its age code sets the range), then check ``ages`` against the range."""
        self.load()
        super().check_ages(ages)

    def output_aligned(self) -> bool:
        return self.align

    def conditioning(self, age: float) -> np.ndarray:
        """The full conditioning vector (25 camera entries + age code) for a frontal view at ``age``."""
        rk = getattr(self.G, "rendering_kwargs", None) or {}
        cam = look_at_cam2world(math.pi / 2, math.pi / 2, rk.get("avg_camera_pivot", [0, 0, 0]),
                                rk.get("avg_camera_radius", CAM_RADIUS))
        return np.concatenate([cam.reshape(16), fov_to_intrinsics(self.fov_deg).reshape(9), self.age_code(age)])

    # --- generation -------------------------------------------------------------------------------------
    def __call__(self, identities: Iterable[Identity], ages: AgesArg) -> Iterator[Sample]:
        self.load()
        jobs = [(ident, int(a)) for ident in identities for a in ages_for(ages, ident.id)]
        self.check_ages(sorted({a for _, a in jobs}))
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            img = self._render(chunk)
            for k, (ident, age) in enumerate(chunk):
                image = to_uint8_image(img[k:k + 1])
                code = self.age_code(age)
                info_d = {"seed": ident.seed, "age_fed": round(self.age_code.fed_age(age), 4),
                          "age_code": [round(float(v), 4) for v in code] if self.age_code.kind == "scalar"
                          else int(np.argmax(code))}
                if self.align:
                    image = self._align(image)
                    if image is None:
                        info_d["error"] = "no face found in the generated image (alignment to 112x112)"
                yield Sample(ident, age, image, info_d)

    def _render(self, chunk: list[tuple[Identity, int]]):
        """One mapping + synthesis pass over ``chunk``; torch's RNG is seeded from its identity seeds."""
        torch = self._torch
        z = np.concatenate([np.random.RandomState(ident.seed).randn(1, self.G.z_dim) for ident, _ in chunk])
        c = np.stack([self.conditioning(a) for _, a in chunk])
        z_t = torch.from_numpy(z).float().to(self.device)
        c_t = torch.from_numpy(c).float().to(self.device)
        dev = torch.device(self.device)
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(render_seed(ident.seed for ident, _ in chunk))
            ws = self.G.mapping(z_t, c_t, truncation_psi=self.truncation_psi,
                                truncation_cutoff=self.truncation_cutoff)
            return self.G.synthesis(ws, c_t, noise_mode=self.noise_mode)["image"]

    def _align(self, image: np.ndarray) -> np.ndarray | None:
        from agebias.data.align import align_face
        from agebias.data.detect import detect_faces, pick_main_face

        det = pick_main_face(detect_faces(image), image.shape)
        return None if det is None else align_face(image, det.landmarks, 112)

    def close(self) -> None:
        self.G = None

    @classmethod
    def doctor(cls, repo=None, checkpoint=None, truncation_psi=None, **_: Any) -> list[tuple[str, bool, str]]:
        rows, _code = doctor_rows(CHECKOUT_NAME, repo, checkpoint, ("eg3d", ""),
                                  "pass --checkpoint NET.pkl (EG3D-Age G_ema) and --trust-checkpoint")
        if checkpoint and Path(checkpoint).is_file():
            ckpt = Path(checkpoint)
            opts = ckpt.parent / "training_options.json"
            rows.append(("training options", opts.is_file(), str(opts) if opts.is_file() else
                         f"no training_options.json beside {ckpt.name}: age range 0-100 (scalar) would be assumed"))
            cal = calibration_file(ckpt, DEFAULT_PSI if truncation_psi is None else truncation_psi)
            rows.append(("calibration", cal.is_file(), str(cal) if cal.is_file() else
                         f"no {cal.name} beside {ckpt.name}: ages would be fed uncalibrated"))
        return rows


def check_age_conditioning(G: Any) -> None:
    """Refuse a network whose mapping cannot see the age: ``c_gen_conditioning_zero`` set, or ``c_scale`` missing
    or 0 (``TriPlaneGenerator.mapping`` zeroes c, or multiplies it by ``rendering_kwargs.get('c_scale', 0)``)."""
    rk = getattr(G, "rendering_kwargs", None) or {}
    if rk.get("c_gen_conditioning_zero"):
        raise ModelError("eg3d: this network was trained without generator pose conditioning "
                         "(rendering_kwargs c_gen_conditioning_zero, train.py --gen_pose_cond False): its mapping "
                         "zeroes the conditioning, age included, so it cannot be age-conditioned")
    if not rk.get("c_scale"):
        raise ModelError(f"eg3d: the network's rendering_kwargs c_scale is {rk.get('c_scale', 'missing')}: its mapping "
                         f"multiplies the conditioning by it, so the age would not reach the network")
