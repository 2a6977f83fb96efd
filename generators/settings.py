"""Settings of a generation run (:class:`GenerateSettings`): ``agebias generate`` options, ``[generate]`` keys of
experiment files and the keyword arguments of :func:`agebias.generate` all come from these fields.

Generator-specific settings (``truncation_psi``, ``prompt``, ...) are passed to the chosen generator only when set;
a generator refuses settings it does not use. ``options`` carries any further ``KEY=VALUE`` for entry-point
generators. Target ages are either ``ages`` (the same list for every identity) or ``age_intervals``: half-open
sampling intervals from which ``per_interval`` random ages are drawn per identity (see :mod:`generators.ages`).

Quality control (:mod:`generators.qc`) has its own :class:`QCSettings` (``agebias qc``); ``agebias generate --qc``
takes the same settings as ``qc_model`` and ``qc_min_similarity``, fields made from the QCSettings ones (one
definition: default, help and check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agebias.errors import SettingsError
from agebias.settings import Settings, at_least, between, setting
from generators.ages import AgePlan

# settings handed to the generator's from_config when they are set (None = the generator's own default)
GENERATOR_OPTIONS = ("batch_size", "device", "checkpoint", "repo", "trust_checkpoint", "truncation_psi",
                     "truncation_cutoff", "calibration", "source_age", "prompt", "strength", "guidance", "steps")


def _methods() -> list[str]:
    from generators.registry import available_generators

    return available_generators()


PACKAGE_PHOTOS = "package-photos"  # sources: the face photos that ship in installed packages


@dataclass
class QCSettings(Settings):
    """Settings of the quality control of a generated set (``agebias qc``; see :mod:`generators.qc`)."""

    stage = "qc"

    model: str = setting("sface", help="face-recognition model that measures identity (sface, .pth, .onnx)",
                         short="-m")
    min_similarity: float = setting(0.3, help="reject an image whose cosine to its identity's reference is lower",
                                    check=between(-1, 1))
    device: str | None = setting(None, help="cpu, cuda or cuda:N for the identity model and face detection "
                                            "(default: CUDA when present for the model, cpu for detection)")
    out: str | None = setting(None, help="QC folder (default: <generated set>/qc)", short="-o")


def _qc_setting(name: str) -> Any:
    """A GenerateSettings field ``qc_<name>`` with the default, help and check of ``QCSettings.<name>``."""
    f = QCSettings.__dataclass_fields__[name]
    return setting(f.default, help="QC: " + f.metadata["help"], check=f.metadata["check"])


@dataclass
class GenerateSettings(Settings):
    """Everything ``agebias generate`` needs; ``out`` is the only setting without a default."""

    stage = "generate"

    out: str = setting(help="output folder: <out>/<id>/<id>_<age>.png, manifest.csv, contact_sheet.png",
                       short="-o", toml=False)
    method: str = setting("cardioid", help="generator: cardioid, eg3d, cusp, diffusion or an installed entry point "
                                           "(agebias doctor lists them)", short="-m", choices=_methods)
    identities: int | None = setting(None, help="number of seed identities (unconditional generators such as eg3d)",
                                     short="-n", check=at_least(1))
    sources: str | None = setting(None, help="folder of source photos, one identity per photo (editing generators), "
                                             f"or {PACKAGE_PHOTOS} (photos that ship in installed packages: 4, or 9 "
                                             "faces with all_faces)")
    aligned_sources: bool = setting(False, help="the source photos are already 112x112 aligned crops")
    all_faces: bool = setting(False, help="every face of a group photo becomes an identity")
    ages: list[int] = setting(help="target ages in years for every identity, e.g. 5,10,15", default_factory=list)
    age_intervals: list[str] = setting(help="half-open sampling intervals lo-hi (lo <= age < hi, the last one "
                                            "includes hi), e.g. 0-5,5-10,10-15: per_interval random ages each",
                                       default_factory=list)
    per_interval: int = setting(1, help="random ages drawn per interval and identity", check=at_least(1))
    seed: int = setting(0, help="first seed (identity seed0000 = seed 0); also seeds the age draws",
                        check=at_least(0))
    batch_size: int | None = setting(None, help="images per generator call (default: the generator's)",
                                     check=at_least(1))
    device: str | None = setting(None, help="cpu, cuda or cuda:N (default: CUDA when present)")
    checkpoint: str | None = setting(None, help="generator network pickle, model folder or hub id (eg3d, cusp, "
                                                "diffusion)")
    repo: str | None = setting(None, help="upstream checkout (default third_party/<name>)")
    trust_checkpoint: bool = setting(False, help="allow loading network pickles (they run code: trusted files only)")
    truncation_psi: float | None = setting(None, help="EG3D truncation psi (default 0.75, as its authors generated)")
    truncation_cutoff: int | None = setting(None, help="EG3D truncation cutoff (default 14; 0 disables truncation)",
                                            check=at_least(0))
    calibration: str | None = setting(None, help="EG3D-Age age calibration file calibrate-<psi>.npy (default: "
                                                 "found beside the checkpoint; none: feed the ages uncalibrated)")
    source_age: float | None = setting(None, help="assumed age of the source photos (cardioid)",
                                       check=between(0, 120))
    prompt: str | None = setting(None, help="diffusion prompt; {age} is replaced by the target age")
    strength: float | None = setting(None, help="diffusion img2img strength", check=between(0, 1))
    guidance: float | None = setting(None, help="diffusion guidance scale", check=at_least(0))
    steps: int | None = setting(None, help="diffusion inference steps", check=at_least(1))
    options: dict = setting(help="further generator options KEY=VALUE (repeatable; values read as JSON when they "
                                 "parse)", flag="--option", repeat=True, default_factory=dict, metavar="KEY=VALUE")
    qc: bool = setting(False, help="quality control after generation: face found, identity kept, apparent age")
    qc_model: str = _qc_setting("model")
    qc_min_similarity: float = _qc_setting("min_similarity")
    contact_sheet: bool = setting(True, help="write contact_sheet.png (identities x ages)")

    def check(self) -> None:
        if self.identities is not None and self.sources is not None:
            raise SettingsError("give identities (seeds) or sources (photos), not both", field="sources",
                                stage=self.stage)
        if self.per_interval != 1 and not self.age_intervals:
            raise SettingsError("goes with age_intervals (random ages per interval), not with ages",
                                field="per_interval", stage=self.stage)
        if self.ages or self.age_intervals:  # both given, negative ages, interval syntax and order, per_interval's fit
            self.age_plan()

    def age_plan(self) -> AgePlan:
        """Who gets which ages (``ages`` or ``age_intervals``); ``SettingsError`` naming the field when unusable."""
        return AgePlan.from_options(ages=",".join(map(str, self.ages)) or None,
                                    age_intervals=",".join(self.age_intervals) or None,
                                    per_interval=self.per_interval, seed=self.seed)

    def qc_settings(self) -> QCSettings:
        """The QC settings of this run (QC files in ``<out>/qc``)."""
        return QCSettings(model=self.qc_model, min_similarity=self.qc_min_similarity, device=self.device)

    def generator_options(self) -> dict[str, Any]:
        """The settings handed to the generator (those that are set), then ``options``."""
        out = {k: getattr(self, k) for k in GENERATOR_OPTIONS if getattr(self, k) not in (None, False)}
        out.update(self.options)
        return out
