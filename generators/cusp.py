"""``cusp``: CUSP (Gomez-Trenado et al., "Custom Structure Preservation in Face Aging", ECCV 2022), an
image-to-image face-aging network. Upstream ships no inference CLI (a notebook only); this adapter reproduces the
notebook's inference path on the pickled ``G_ema``:

1. source face -> FFHQ-style crop at the model's side (see :mod:`generators.ffhq_crop`): the restricted-range model
   (``rr``, 224 px, trained on FFHQ-RR) gets FFHQ's crop (eye-to-mouth factor 1.8), the lifespan model (``ls``,
   256 px, trained on FFHQ-Aging) FFHQ-Aging's larger crop (factor 2.2); RGB scaled to [-1, 1] as the notebook
   does (``x / 256 * 2 - 1``), NCHW;
2. ``_, skips = G.content_enc(img)``; ``s = G.style_enc(img)[0].mean((2, 3))``;
   ``s = G.style_map(s, None, 1, None)``; ``a = G.attr_map(onehot(age_class), None, 1, None)``;
   ``w = G.__interleave_attr_style__(a, s)``;
3. every skip with a transform is blurred with ``G._batch_blur(skip, blur_val=global_blur)`` (default 0.2);
4. the DEX VGG-16 age classifier's saliency (``G.skip_grad_blur(img)``, which back-propagates, so it runs with
   gradients enabled) is the mask ``m``, computed once per source face; each such skip becomes
   ``skip * m + blur(skip, mask_blur) * (1 - m)`` (``mask_blur`` default 0.8; 0.2/0.8 are the notebook's and the
   MSc thesis pipeline's settings);
5. ``G.image_dec(skips, w)`` in [-1, 1] -> uint8.

``G(img, cls)`` is not called: ``Image2Image.forward`` draws a random blur per sample for the released models (it
overwrites ``blur_val``), so the sub-modules are run as above and the outputs are deterministic.

Age classes: the one-hot width is ``G.attr_map.fc0.init_args[0]``. With 101 entries (restricted-range model) the
class is the age in years and the model's range is 20-65 (the notebook's; trained on 20-70). The lifespan model's
classes are not named in the CUSP code; we read them as the 10 FFHQ-Aging groups 0-2, 3-6, 7-9, 10-14, 15-19,
20-29, 30-39, 40-49, 50-69, 70+ (our reading, recorded as a warning with every lifespan run; the notebook uses
classes 1-8), and refuse a lifespan network whose class count differs from that table.

DEX weights: ``dex_imdb_wiki.caffemodel.pt`` (a state dict converted from Rothe et al.'s Caffe model; key names use
'-' where the checkout's ``training.networks.VGG`` uses '_'), loaded with ``torch.load(weights_only=True)`` into a
fresh ``VGG()`` set as ``G.skip_grad_blur.model.classifier``, as the notebook does; the saliency wrapper's hooks are
then registered on it (``G.skip_grad_blur.register_hooks()``). Found at ``dex=PATH`` or beside the checkpoint or in
the checkout. Loading the pickle runs the checkout's ``training/loss.py``, which imports pandas, scipy and
torchvision (the checkout's requirements).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agebias.errors import ModelError, SettingsError
from generators.ages import AgesArg, ages_for
from generators.base import Generator, Identity, Sample, to_uint8_image
from generators.checkout import (doctor_rows, file_sha256, find_code_dir, import_from_checkout, load_g_ema,
                                 pick_device, require_checkpoint)
from generators.ffhq_crop import FFHQ_AGING_MOUTH_FACTOR, FFHQ_MOUTH_FACTOR

CHECKOUT_NAME = "cusp"
DEX_NAME = "dex_imdb_wiki.caffemodel.pt"
LIFESPAN_GROUPS = ((0, 2), (3, 6), (7, 9), (10, 14), (15, 19), (20, 29), (30, 39), (40, 49), (50, 69), (70, 200))
RR_CLASSES = 101
VARIANTS = {
    "rr": {"side": 224, "range": (20, 65), "mouth_factor": FFHQ_MOUTH_FACTOR, "classes": RR_CLASSES},
    "ls": {"side": 256, "range": (0, 100), "mouth_factor": FFHQ_AGING_MOUTH_FACTOR, "classes": len(LIFESPAN_GROUPS)},
}
CHECKOUT_REQUIREMENTS = ("pandas", "scipy", "torchvision")  # imported by the checkout's training/loss.py
LIFESPAN_NOTE = ("cusp lifespan model: its 10 age classes are read as the FFHQ-Aging groups 0-2, 3-6, 7-9, 10-14, "
                 "15-19, 20-29, 30-39, 40-49, 50-69, 70+ (our reading; the CUSP code does not name them)")


def lifespan_class(age: int) -> int:
    """FFHQ-Aging group index (0..9) of an age in years."""
    for i, (lo, hi) in enumerate(LIFESPAN_GROUPS):
        if lo <= age <= hi:
            return i
    raise SettingsError(f"cusp: age {age} has no lifespan group", field="ages")


def crop_factor(variant: str) -> float:
    """The FFHQ-style crop's eye-to-mouth factor for a variant: 1.8 (``rr``, FFHQ) or 2.2 (``ls``, FFHQ-Aging)."""
    return float(VARIANTS[variant]["mouth_factor"])


def to_model_input(crop: np.ndarray):
    """uint8 (H, W, 3) RGB -> float32 tensor (1, 3, H, W) in [-1, 1), as the notebook: ``x / 256 * 2 - 1``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float()[None] / 128.0 - 1.0


def missing_requirements() -> list[str]:
    """The checkout's requirements that cannot be imported here."""
    return [m for m in CHECKOUT_REQUIREMENTS if importlib.util.find_spec(m) is None]


class CUSPGenerator(Generator):
    """CUSP adapter: aligned source faces in, the same faces at target ages out."""

    name = "cusp"
    needs = "sources"
    wants_landmarks = True
    description = "CUSP image-to-image aging (needs the CUSP checkout, a generator pickle and DEX weights)"

    def __init__(self, checkpoint: str | Path | None = None, repo: str | Path | None = None,
                 trust_checkpoint: bool = False, dex: str | Path | None = None, variant: str = "auto",
                 global_blur: float = 0.2, mask_blur: float = 0.8, device: str | None = None,
                 batch_size: int = 8, dex_weights: str | Path | None = None, blur_global: float | None = None,
                 blur_mask: float | None = None) -> None:
        # aliases used by experiment files: dex_weights, blur_global, blur_mask
        dex = dex if dex is not None else dex_weights
        global_blur = global_blur if blur_global is None else blur_global
        mask_blur = mask_blur if blur_mask is None else blur_mask
        self.checkpoint = require_checkpoint("cusp", checkpoint, True, "a CUSP generator pickle (G_ema)")
        self.code_dir = find_code_dir(CHECKOUT_NAME, repo, subdirs=("", "cusp-pytorch"))
        self.dex = self._find_dex(dex)
        require_checkpoint("cusp", self.checkpoint, bool(trust_checkpoint), "a CUSP generator pickle (G_ema)")
        if variant not in ("auto", "rr", "ls"):
            raise SettingsError(f"cusp: variant {variant!r} must be auto, rr (restricted range, 224) or ls "
                                f"(lifespan, 256)", field="variant")
        for name, v in (("global_blur", global_blur), ("mask_blur", mask_blur)):
            if not 0.0 <= float(v) <= 1.0:
                raise SettingsError(f"cusp: {name} {v} must be in [0, 1]", field=name)
        self.variant = variant
        self.global_blur, self.mask_blur = float(global_blur), float(mask_blur)
        self.device_request = device
        self.batch_size = max(1, int(batch_size))
        self.age_range = VARIANTS[variant]["range"] if variant != "auto" else (0, 100)
        self.G = None
        self.device = None
        self.side: int | None = VARIANTS[variant]["side"] if variant != "auto" else None
        self.attr_dim: int | None = None

    def _find_dex(self, dex: str | Path | None) -> Path:
        if dex is not None:
            p = Path(dex).expanduser()
            if not p.is_file():
                raise SettingsError(f"cusp: DEX weights {p} not found", field="dex")
            return p
        for p in (self.checkpoint.parent / DEX_NAME, self.code_dir / DEX_NAME, self.code_dir / "models" / DEX_NAME):
            if p.is_file():
                return p
        raise SettingsError(f"cusp: DEX weights {DEX_NAME} not found beside the checkpoint or in the checkout; pass "
                            f"--option dex=PATH (see third_party/README.md)", field="dex")

    def load(self) -> CUSPGenerator:
        """Load ``G_ema`` with the checkout's ``legacy.load_network_pkl`` and attach the DEX classifier."""
        if self.G is not None:
            return self
        import torch

        self.device = pick_device(self.device_request)
        G = load_g_ema("cusp", self.code_dir, self.checkpoint,
                       f"the checkout's requirements: pip install {' '.join(CHECKOUT_REQUIREMENTS)}")
        networks = import_from_checkout(self.code_dir, "training.networks")
        for attr in ("content_enc", "style_enc", "style_map", "attr_map", "image_dec", "skip_grad_blur"):
            if getattr(G, attr, None) is None:
                raise ModelError(f"cusp: the pickled G_ema has no '{attr}' (not a CUSP generator?)")
        init_args = getattr(getattr(G.attr_map, "fc0", None), "init_args", None)
        if not init_args:
            raise ModelError("cusp: the pickled G_ema's attr_map has no fc0.init_args (not a CUSP generator?)")
        self.attr_dim = int(init_args[0])
        self.variant = self._check_variant(self.attr_dim)
        spec = VARIANTS[self.variant]
        self.side = _network_resolution(G) or spec["side"]
        self.age_range = spec["range"]
        G.skip_grad_blur.model.classifier = self._dex_vgg(networks, torch)
        self.G = G.to(self.device).eval().requires_grad_(False)
        G.skip_grad_blur.model.to(self.device)  # the DEX holder is no torch Module: G.to does not move it
        G.skip_grad_blur.register_hooks()  # the wrapper's Grad-CAM hooks, on the new classifier
        self._torch = torch
        return self

    def _check_variant(self, attr_dim: int) -> str:
        """The variant that fits a one-hot of ``attr_dim`` classes; ``ModelError`` when the asked one does not."""
        variant = self.variant if self.variant != "auto" else ("rr" if attr_dim == RR_CLASSES else "ls")
        want = VARIANTS[variant]["classes"]
        if attr_dim != want:
            table = ("the age in years 0-100" if variant == "rr" else
                     f"our table of {want} FFHQ-Aging groups (0-2, 3-6, ..., 70+)")
            raise ModelError(f"cusp: the network's age one-hot has {attr_dim} classes (attr_map.fc0.init_args[0]) "
                             f"but variant {variant} expects {want}, {table}")
        return variant

    def _dex_vgg(self, networks, torch):
        """The checkout's ``VGG`` with the DEX weights (built on the meta device, then given the loaded tensors)."""
        try:
            state = torch.load(self.dex, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises several types for non-checkpoint files
            raise ModelError(f"cusp: cannot read DEX weights {self.dex}: {err}") from None
        with torch.device("meta"):
            vgg = networks.VGG()
        try:
            vgg.load_state_dict({k.replace("-", "_"): v for k, v in state.items()}, assign=True)
        except (RuntimeError, AttributeError) as err:
            raise ModelError(f"cusp: {self.dex.name} does not match the checkout's VGG: {str(err)[:200]}") from None
        return vgg.requires_grad_(False).eval()

    def age_class(self, age: int) -> int:
        return int(age) if self.attr_dim == RR_CLASSES else lifespan_class(int(age))

    def parameters(self) -> dict[str, Any]:
        if self.variant == "auto":
            self.load()
        if not getattr(self, "_ckpt_sha", None):
            self._ckpt_sha = file_sha256(self.checkpoint)
        return {"checkpoint": str(self.checkpoint), "checkpoint_sha256": self._ckpt_sha, "dex": str(self.dex),
                "variant": self.variant, "global_blur": self.global_blur, "mask_blur": self.mask_blur,
                "crop": f"ffhq-style 5-point, eye-to-mouth factor {crop_factor(self.variant)}", "side": self.side}

    def warnings(self) -> list[str]:
        return [LIFESPAN_NOTE] if self.variant == "ls" else []

    def check_ages(self, ages) -> None:
        if self.variant == "auto":
            self.load()
        super().check_ages(ages)

    def _crop(self, ident: Identity) -> np.ndarray:
        from generators.ffhq_crop import ffhq_crop

        factor = crop_factor(self.variant)
        if ident.original is not None and ident.landmarks is not None:
            return ffhq_crop(ident.original, ident.landmarks, self.side, factor)
        if ident.image is None:
            raise SettingsError("cusp edits real faces: use sources DIR", field="sources")
        from agebias.data.align import template_for

        h = ident.image.shape[0]
        return ffhq_crop(ident.image, template_for(h), self.side, factor)

    def saliency(self, img):
        """The DEX saliency mask (B, 1, S, S) of ``img`` (B, 3, S, S) in [-1, 1]; it back-propagates through the
        classifier, so it runs with gradients enabled. Each image's mask depends on that image only."""
        torch = self._torch
        with torch.enable_grad():
            return self.G.skip_grad_blur(img.detach().clone().float()).detach()

    def edit(self, img, labels, msk=None):
        """One CUSP pass (see the module notes); ``img`` (B, 3, S, S) in [-1, 1], ``labels`` (B,) long, ``msk`` the
        images' saliency masks (computed when not given)."""
        torch = self._torch
        import torch.nn.functional as F

        G = self.G
        if msk is None:
            msk = self.saliency(img)
        with torch.no_grad():
            onehot = F.one_hot(labels, num_classes=self.attr_dim).float().to(img.device)
            _, skips = G.content_enc(img)
            skips = list(skips)
            s_out = G.style_enc(img)[0].mean((2, 3))
            s_out = G.style_map(s_out, None, 1, None)
            a_out = G.attr_map(onehot, None, 1, None)
            w = G.__interleave_attr_style__(a_out, s_out)
            for i, (f, c) in enumerate(zip(G.skip_transf, skips, strict=True)):
                if f is not None:
                    c = G._batch_blur(c, blur_val=self.global_blur)
                    blur_c = G._batch_blur(c, blur_val=self.mask_blur)
                    if msk.size(2) != c.size(-1):
                        msk = F.interpolate(msk, size=(c.size(-1), c.size(-1)), mode="area")
                    skips[i] = c * msk + blur_c * (1 - msk)
            skips = [f(c) if f is not None else c for f, c in zip(G.skip_transf, skips, strict=True)]
            return G.image_dec(skips, w)

    def __call__(self, identities: Iterable[Identity], ages: AgesArg) -> Iterator[Sample]:
        self.load()
        torch = self._torch
        jobs = [(ident, int(a)) for ident in identities for a in ages_for(ages, ident.id)]
        self.check_ages(sorted({a for _, a in jobs}))
        crops: dict[str, Any] = {}
        masks: dict[str, Any] = {}
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            new = list(dict.fromkeys(ident.id for ident, _ in chunk if ident.id not in masks))
            for ident, _ in chunk:
                if ident.id not in crops:
                    crops[ident.id] = to_model_input(self._crop(ident)).to(self.device)
            if new:
                for ident_id, m in zip(new, self.saliency(torch.cat([crops[i] for i in new])), strict=True):
                    masks[ident_id] = m[None]
            img = torch.cat([crops[ident.id] for ident, _ in chunk])
            msk = torch.cat([masks[ident.id] for ident, _ in chunk])
            labels = torch.tensor([self.age_class(a) for _, a in chunk], dtype=torch.long, device=img.device)
            out = self.edit(img, labels, msk)
            for k, (ident, age) in enumerate(chunk):
                info = {"age_class": self.age_class(age)}
                if self.variant == "ls":
                    lo, hi = LIFESPAN_GROUPS[info["age_class"]]
                    info["age_group"] = f"{lo}+" if hi >= 200 else f"{lo}-{hi}"
                yield Sample(ident, age, to_uint8_image(out[k:k + 1]), info)

    def close(self) -> None:
        self.G = None

    @classmethod
    def doctor(cls, repo=None, checkpoint=None, **_: Any) -> list[tuple[str, bool, str]]:
        rows, code = doctor_rows(CHECKOUT_NAME, repo, checkpoint, ("", "cusp-pytorch"),
                                 "pass --checkpoint G.pkl (CUSP RR 224 or LS 256) and --trust-checkpoint")
        missing = missing_requirements()
        rows.append(("checkout requirements", not missing,
                     f"{', '.join(CHECKOUT_REQUIREMENTS)} importable" if not missing else
                     f"missing {', '.join(missing)} (the checkout's training/loss.py imports them when a pickle "
                     f"loads): pip install {' '.join(missing)}"))
        dex_places = [p for p in ([Path(checkpoint).parent / DEX_NAME] if checkpoint else []) +
                      ([code / DEX_NAME, code / "models" / DEX_NAME] if code else []) if p.is_file()]
        rows.append(("DEX weights", bool(dex_places), str(dex_places[0]) if dex_places else
                     f"put {DEX_NAME} beside the checkpoint or pass --option dex=PATH"))
        return rows


def _network_resolution(G: Any) -> int | None:
    """The pickled network's image side: ``Image2Image``'s ``img_resolution`` constructor argument."""
    kwargs = getattr(G, "init_kwargs", None) or {}
    res = kwargs.get("img_resolution") or getattr(G, "img_resolution", None)
    return int(res) if res else None
