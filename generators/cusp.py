"""``cusp``: CUSP (Gomez-Trenado et al., "Custom Structure Preservation in Face Aging", ECCV 2022), an
image-to-image face-aging network. Upstream ships no inference CLI (a notebook only); this adapter reproduces the
notebook's inference path on the pickled ``G_ema``:

1. source face -> FFHQ-style crop at the model's side (224 restricted-range, 256 lifespan; see
   :mod:`generators.ffhq_crop`), RGB scaled to [-1, 1] (``x / 127.5 - 1``), NCHW;
2. ``_, skips = G.content_enc(img)``; ``s = G.style_enc(img)[0].mean((2, 3))``;
   ``s = G.style_map(s, None, 1, None)``; ``a = G.attr_map(onehot(age_class), None, 1, None)``;
   ``w = G.__interleave_attr_style__(a, s)``;
3. every skip with a transform is blurred with ``G._batch_blur(skip, blur_val=global_blur)`` (default 0.2);
4. the DEX VGG-16 age classifier's saliency (``G.skip_grad_blur(img)``, which back-propagates, so it runs with
   gradients enabled) is the mask ``m``; each such skip becomes ``skip * m + blur(skip, mask_blur) * (1 - m)``
   (``mask_blur`` default 0.8; 0.2/0.8 are the MSc thesis pipeline's settings);
5. ``G.image_dec(skips, w)`` in [-1, 1] -> uint8.

Age classes: the one-hot width is ``G.attr_map.fc0.init_args[0]``. With 101 entries (restricted-range model) the
class is the age in years and the model's range is 20-65 (the ages it was trained on). With 10 entries (lifespan
model, FFHQ-Aging groups) the class is the group of the age: 0-2, 3-6, 7-9, 10-14, 15-19, 20-29, 30-39, 40-49,
50-69, 70+ (our reading of the FFHQ-Aging label set; verify against your checkpoint).

DEX weights: ``dex_imdb_wiki.caffemodel.pt`` (a state dict converted from Rothe et al.'s Caffe model; key names use
'-' where the checkout's ``training.networks.VGG`` uses '_'), loaded with ``torch.load(weights_only=True)`` and set
as ``G.skip_grad_blur.model.classifier``. Found at ``dex=PATH`` or beside the checkpoint or in the checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from agebias.errors import UserError
from generators.ages import AgesArg, ages_for
from generators.base import Generator, Identity, Sample, to_uint8_image
from generators.checkout import (doctor_rows, file_sha256, find_code_dir, import_from_checkout, pick_device,
                                 require_checkpoint)

CHECKOUT_NAME = "cusp"
DEX_NAME = "dex_imdb_wiki.caffemodel.pt"
LIFESPAN_GROUPS = ((0, 2), (3, 6), (7, 9), (10, 14), (15, 19), (20, 29), (30, 39), (40, 49), (50, 69), (70, 200))
VARIANTS = {"rr": {"side": 224, "range": (20, 65)}, "ls": {"side": 256, "range": (0, 100)}}


def lifespan_class(age: int) -> int:
    """FFHQ-Aging group index (0..9) of an age in years."""
    for i, (lo, hi) in enumerate(LIFESPAN_GROUPS):
        if lo <= age <= hi:
            return i
    raise UserError(f"cusp: age {age} has no lifespan group")


def to_model_input(crop: np.ndarray):
    """uint8 (H, W, 3) RGB -> float32 tensor (1, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float()[None] / 127.5 - 1.0


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
            raise UserError(f"cusp: variant {variant!r} must be auto, rr (restricted range, 224) or ls (lifespan, 256)")
        for name, v in (("global_blur", global_blur), ("mask_blur", mask_blur)):
            if not 0.0 <= float(v) <= 1.0:
                raise UserError(f"cusp: {name} {v} must be in [0, 1]")
        self.variant = variant
        self.global_blur, self.mask_blur = float(global_blur), float(mask_blur)
        self.device_request = device
        self.batch_size = max(1, int(batch_size))
        self.age_range = VARIANTS[variant]["range"] if variant != "auto" else (0, 100)
        self.G = None
        self.device = None
        self.side = VARIANTS[variant]["side"] if variant != "auto" else None
        self.attr_dim: int | None = None

    def _find_dex(self, dex: str | Path | None) -> Path:
        if dex is not None:
            p = Path(dex).expanduser()
            if not p.is_file():
                raise UserError(f"cusp: DEX weights {p} not found")
            return p
        for p in (self.checkpoint.parent / DEX_NAME, self.code_dir / DEX_NAME, self.code_dir / "models" / DEX_NAME):
            if p.is_file():
                return p
        raise UserError(f"cusp: DEX weights {DEX_NAME} not found beside the checkpoint or in the checkout; pass "
                        f"--option dex=PATH (see third_party/README.md)")

    def load(self) -> "CUSPGenerator":
        """Load ``G_ema`` with the checkout's ``legacy.load_network_pkl`` and attach the DEX classifier."""
        if self.G is not None:
            return self
        import torch

        self.device = pick_device(self.device_request)
        import_from_checkout(self.code_dir, "dnnlib")
        legacy = import_from_checkout(self.code_dir, "legacy")
        networks = import_from_checkout(self.code_dir, "training.networks")
        with open(self.checkpoint, "rb") as fh:
            data = legacy.load_network_pkl(fh)
        if not isinstance(data, dict) or "G_ema" not in data:
            raise UserError(f"cusp: {self.checkpoint} holds no 'G_ema' network")
        G = data["G_ema"]
        for attr in ("content_enc", "style_enc", "style_map", "attr_map", "image_dec", "skip_grad_blur"):
            if getattr(G, attr, None) is None:
                raise UserError(f"cusp: the pickled G_ema has no '{attr}' (not a CUSP generator?)")
        try:
            state = torch.load(self.dex, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"cusp: cannot read DEX weights {self.dex}: {err}") from None
        vgg = networks.VGG()
        try:
            vgg.load_state_dict({k.replace("-", "_"): v for k, v in state.items()})
        except RuntimeError as err:
            raise UserError(f"cusp: {self.dex.name} does not match the checkout's VGG: {str(err)[:200]}") from None
        vgg.requires_grad_(False).eval()
        G.skip_grad_blur.model.classifier = vgg
        self.G = G.to(self.device).eval().requires_grad_(False)
        fc0 = getattr(G.attr_map, "fc0", None)
        init_args = getattr(fc0, "init_args", None)
        self.attr_dim = int(init_args[0]) if init_args else int(getattr(G.attr_map, "z_dim"))
        res = int(getattr(G, "img_resolution", 0) or 0)
        if self.variant == "auto":
            self.variant = "rr" if self.attr_dim == 101 and res != 256 else "ls"
        self.side = self.side or res or VARIANTS[self.variant]["side"]
        self.age_range = VARIANTS[self.variant]["range"]
        if self.attr_dim not in (101, len(LIFESPAN_GROUPS)):
            raise UserError(f"cusp: unexpected age one-hot width {self.attr_dim} (101 or 10 expected)")
        self._torch = torch
        return self

    def age_class(self, age: int) -> int:
        return int(age) if self.attr_dim == 101 else lifespan_class(int(age))

    def parameters(self) -> dict[str, Any]:
        if not getattr(self, "_ckpt_sha", None):
            self._ckpt_sha = file_sha256(self.checkpoint)
        return {"checkpoint": str(self.checkpoint), "checkpoint_sha256": self._ckpt_sha, "dex": str(self.dex), "variant": self.variant,
                "global_blur": self.global_blur, "mask_blur": self.mask_blur, "crop": "ffhq-style 5-point"}

    def check_ages(self, ages) -> None:
        if self.variant == "auto":
            self.load()
        super().check_ages(ages)

    def _crop(self, ident: Identity) -> np.ndarray:
        from generators.ffhq_crop import ffhq_crop

        if ident.original is not None and ident.landmarks is not None:
            return ffhq_crop(ident.original, ident.landmarks, self.side)
        if ident.image is None:
            raise UserError("cusp edits real faces: use --sources DIR")
        from agebias.data.align import template_for

        h = ident.image.shape[0]
        return ffhq_crop(ident.image, template_for(h), self.side)

    def edit(self, img, labels):
        """One CUSP forward pass (see the module notes); ``img`` (B, 3, S, S) in [-1, 1], ``labels`` (B,) long."""
        torch = self._torch
        import torch.nn.functional as F

        G = self.G
        with torch.no_grad():
            onehot = F.one_hot(labels, num_classes=self.attr_dim).float().to(img.device)
            _, skips = G.content_enc(img)
            skips = list(skips)
            s_out = G.style_enc(img)[0].mean((2, 3))
            s_out = G.style_map(s_out, None, 1, None)
            a_out = G.attr_map(onehot, None, 1, None)
            w = G.__interleave_attr_style__(a_out, s_out)
            for i, (f, _) in enumerate(zip(G.skip_transf, skips)):
                if f is not None:
                    skips[i] = G._batch_blur(skips[i], blur_val=self.global_blur)
        with torch.enable_grad():  # the saliency map back-propagates through the DEX classifier
            msk = G.skip_grad_blur(img.detach().clone().float()).detach()
        with torch.no_grad():
            for i, (f, c) in enumerate(zip(G.skip_transf, skips)):
                if f is not None:
                    blur_c = G._batch_blur(c, blur_val=self.mask_blur)
                    if msk.size(2) != c.size(-1):
                        msk = F.interpolate(msk, size=(c.size(-1), c.size(-1)), mode="area")
                    skips[i] = c * msk + blur_c * (1 - msk)
            skips = [f(c) if f is not None else c for f, c in zip(G.skip_transf, skips)]
            return G.image_dec(skips, w)

    def __call__(self, identities: Iterable[Identity], ages: AgesArg) -> Iterator[Sample]:
        self.load()
        torch = self._torch
        jobs = [(ident, int(a)) for ident in identities for a in ages_for(ages, ident.id)]
        self.check_ages(sorted({a for _, a in jobs}))
        crops: dict[str, Any] = {}
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start:start + self.batch_size]
            for ident, _ in chunk:
                if ident.id not in crops:
                    crops[ident.id] = to_model_input(self._crop(ident))
            img = torch.cat([crops[ident.id] for ident, _ in chunk]).to(self.device)
            labels = torch.tensor([self.age_class(a) for _, a in chunk], dtype=torch.long)
            out = self.edit(img, labels)
            for k, (ident, age) in enumerate(chunk):
                yield Sample(ident, age, to_uint8_image(out[k:k + 1]), {"age_class": self.age_class(age)})

    def close(self) -> None:
        self.G = None

    @classmethod
    def doctor(cls, repo=None, checkpoint=None, **_: Any) -> list[tuple[str, bool, str]]:
        rows, code = doctor_rows(CHECKOUT_NAME, repo, checkpoint, ("", "cusp-pytorch"),
                                 "pass --checkpoint G.pkl (CUSP RR 224 or LS 256) and --trust-checkpoint")
        dex_places = [p for p in ([Path(checkpoint).parent / DEX_NAME] if checkpoint else []) +
                      ([code / DEX_NAME, code / "models" / DEX_NAME] if code else []) if p.is_file()]
        rows.append(("DEX weights", bool(dex_places), str(dex_places[0]) if dex_places else
                     f"put {DEX_NAME} beside the checkpoint or pass --option dex=PATH"))
        return rows
