"""The generator protocol, shaped like a diffusers pipeline: a small class built by ``from_config(**options)``,
called as ``generator(identities, ages)``, yielding one :class:`Sample` per (identity, age).

Identities are seeds for unconditional models (EG3D-Age) or source faces for editing models (CUSP, diffusion,
cardioid); see :class:`Identity`. Images are uint8 (H, W, 3) RGB numpy arrays. Generators do not write files:
:func:`generators.writer.generate_to` lays out, checksums and resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np

from agebias.errors import UserError
from generators.ages import AgesArg, ages_for


@dataclass(frozen=True)
class Identity:
    """One identity to render at several ages.

    ``id``: folder/file stem in the output layout (``seed0000`` or a sanitised source file stem).
    ``seed``: latent seed (seed-driven generators; also the base of per-sample seeds for stochastic editors).
    ``image``: the aligned source face, uint8 (H, W, 3) RGB (source-driven generators), usually 112x112 ArcFace.
    ``source``: the source file path (recorded in the manifest).
    ``landmarks``: five (x, y) points of the face in ``original`` (when known), for generators that need their
    own crop (CUSP's FFHQ-style crop).
    """

    id: str
    seed: int | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)
    source: str | None = None
    landmarks: tuple[tuple[float, float], ...] | None = field(default=None, compare=False)
    original: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass
class Sample:
    """One generated image: ``image`` uint8 (H, W, 3) RGB, ``info`` per-sample details for the manifest.

    ``image=None`` with ``info["error"]`` reports a sample the generator could not make (listed as skipped).
    """

    identity: Identity
    age: int
    image: np.ndarray | None
    info: dict[str, Any] = field(default_factory=dict)


class Generator:
    """Base class of every generator adapter.

    Subclasses set ``name``, ``needs`` ("seeds" or "sources"), ``age_range`` (inclusive, years) and implement
    :meth:`generate_one` (or override :meth:`__call__` for batching) and :meth:`parameters`. ``wants_landmarks``:
    source identities also carry the full photo and its five landmarks (``Identity.original``/``landmarks``), for
    generators that make their own crop.
    """

    name: ClassVar[str] = "base"
    needs: ClassVar[str] = "sources"  # "seeds" | "sources"
    wants_landmarks: ClassVar[bool] = False
    description: ClassVar[str] = ""
    age_range: tuple[int, int] = (0, 100)
    batch_size: int = 1

    @classmethod
    def from_config(cls, **options: Any) -> "Generator":
        """Build from CLI/experiment options (unknown options are rejected by the constructor)."""
        return cls(**options)

    # --- checks -----------------------------------------------------------------------------------------
    def check_ages(self, ages: Iterable[int]) -> None:
        """Raise ``UserError`` when an age is outside what this model can produce."""
        lo, hi = self.age_range
        for age in ages:
            if not lo <= int(age) <= hi:
                raise UserError(f"{self.name}: age {age} is outside this model's range {lo}-{hi}")

    @classmethod
    def doctor(cls, **options: Any) -> list[tuple[str, bool, str]]:
        """Readiness checks as (what, ok, advice) rows for ``agebias doctor``."""
        return [("weights", True, "none needed")]

    # --- generation -------------------------------------------------------------------------------------
    def parameters(self) -> dict[str, Any]:
        """Generator-level settings recorded in the manifest (JSON-serialisable)."""
        return {}

    def warnings(self) -> list[str]:
        """Caveats to record with the run (e.g. missing training options)."""
        return []

    def output_aligned(self) -> bool:
        """True when every output is a 112x112 crop aligned to the ArcFace template, so evaluation and fine-tuning
        use the images as given (recorded as ``aligned_crops`` in generation.json)."""
        return False

    def generate_one(self, identity: Identity, age: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, identities: Iterable[Identity], ages: AgesArg) -> Iterator[Sample]:
        """Yield one :class:`Sample` per identity and age (``ages``: a list for all, or a mapping id -> list)."""
        for identity in identities:
            for age in ages_for(ages, identity.id):
                yield self.generate_one(identity, int(age))

    def close(self) -> None:
        """Release models/memory (optional)."""


def to_uint8_image(array: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """A CHW/HWC (or NCHW with N=1) tensor/array in ``value_range`` -> uint8 (H, W, 3) RGB.

    Uses the StyleGAN/EG3D convention ``x * 127.5 + 128`` for [-1, 1], clamped to 0..255.
    """
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected one image, got batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    lo, hi = value_range
    scaled = (arr - lo) * (255.0 / (hi - lo)) + 0.5 if (lo, hi) != (-1.0, 1.0) else arr * 127.5 + 128.0
    out = np.clip(scaled, 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = out[..., None]
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)
