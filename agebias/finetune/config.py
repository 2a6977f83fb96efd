"""Every setting of a fine-tuning run, as one dataclass (``FinetuneConfig``) with ``from_dict``/``to_dict``.

The *training* settings (everything but :data:`NON_TRAINING_KEYS`) are hashed into ``config_hash``; a run
directory belongs to one hash: re-running with the same settings resumes or returns the finished run, other
settings are refused. Units: learning rate per optimizer step, ``batch_size`` per process (DDP multiplies it by the
number of processes, as arcface_torch does), ``warmup_epochs`` may be fractional, ``margin`` in radians for the
angular heads (arcface, combined's m2) and cosine units for cosface.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from agebias.data.ages import DEFAULT_AGE_BINS
from agebias.errors import UserError

# Settings that do not change the trained weights (where, how fast, how often to report, when to pause).
NON_TRAINING_KEYS = frozenset({
    "out", "resume", "device", "stop_after_epochs", "eval_fgnet", "eval_every", "onnx", "cache", "cache_dir",
    "quiet", "trust_checkpoint", "tensorboard", "align_cache",
})

HEADS = ("arcface", "cosface", "combined")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("none", "cosine", "step")
PRECISIONS = ("fp32", "bf16", "fp16")
INITS = ("pretrained", "random")
CACHE_MODES = ("auto", "ram", "disk", "off")
AUGMENTS = ("none", "flip")


@dataclass
class FinetuneConfig:
    """Settings of ``agebias finetune`` (the CLI options map 1:1 onto these fields)."""

    data: list[str]  # sources, each "PATH[:WEIGHT]" (generated layout dir or manifest CSV); weight = epoch share
    backbone: str  # .pth/.safetensors/.onnx file, or an architecture name with init="random"
    out: str  # run directory
    arch: str | None = None  # architecture of the checkpoint (checked against it) or of a random init
    init: str = "pretrained"  # "pretrained": load `backbone`; "random": build `backbone`/`arch` from scratch
    aligned: bool = False  # images are already 112x112 aligned crops (no detection)
    detector: str = "auto"  # face detector for unaligned images (agebias.data.faces)
    frozen_layers: str = "1,2,3"  # numbers 1-4 and/or "stem"; "" or "none" trains everything
    head: str = "arcface"
    scale: float = 64.0
    margin: str | None = None  # head default when None; "m1,m2,m3" for the combined head
    focal_gamma: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "none"
    warmup_epochs: float = 0.0
    step_epochs: list[int] = field(default_factory=list)  # step scheduler milestones (default: 1/2 and 3/4 of epochs)
    step_gamma: float = 0.1
    epochs: int = 10
    batch_size: int = 25
    val_fraction: float = 0.2
    seed: int = 0
    augment: str = "none"  # "flip": random horizontal flips (disables the prefix cache)
    age_bins: str = DEFAULT_AGE_BINS  # age groups for mitigation and logs, "0-12,13-19,20-39,40-69" (inclusive)
    mitigation: str | None = None  # "NAME[:k=v,...]" (see agebias.finetune.hooks)
    precision: str = "fp32"
    cache_dtype: str = "fp32"  # prefix cache element type; fp16 halves memory but is not bit-exact
    max_val_impostors: int = 1_000_000
    # --- not part of the training identity (NON_TRAINING_KEYS) ---
    resume: bool = False
    device: str = "auto"
    stop_after_epochs: int | None = None  # stop after this many epochs *in this call* (resume later)
    eval_fgnet: str | None = None
    eval_every: int = 1
    onnx: bool = False
    cache: str = "auto"  # where the frozen prefix's outputs live: auto (RAM if small) | ram | disk | off
    cache_dir: str | None = None  # disk cache folder (default RUN_DIR/cache, removed at the end)
    align_cache: str | None = None  # aligned-crop cache folder handed to the data loader
    trust_checkpoint: bool = False
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        self.data = [str(d) for d in self.data]
        if isinstance(self.step_epochs, str):
            self.step_epochs = [int(v) for v in self.step_epochs.split(",") if v.strip()]
        for name in ("arch", "margin", "mitigation", "eval_fgnet", "cache_dir", "align_cache"):
            if getattr(self, name) in ("", None):  # empty strings from experiment files mean "not set"
                setattr(self, name, None)
        if self.margin is not None:
            self.margin = str(self.margin)
        if not str(self.age_bins or "").strip():
            self.age_bins = DEFAULT_AGE_BINS
        self.validate()

    def _check_types(self) -> None:
        """Settings from files (experiment TOML, dicts) must have their field's type: one clear line if not."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("backbone", "out"):
                expected: tuple[type, ...] = (str,)
            elif f.default is dataclasses.MISSING or f.default is None:
                continue
            elif isinstance(f.default, bool):
                expected = (bool,)
            elif isinstance(f.default, (int, float)):
                expected = (int, float) if isinstance(f.default, float) else (int,)
            elif isinstance(f.default, str):
                expected = (str,)
            else:
                continue
            if isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
                kind = "a number" if float in expected else {str: "a string", bool: "true or false"}.get(
                    expected[0], "a whole number")
                raise UserError(f"finetune setting '{f.name}' must be {kind}, got {value!r}")

    def validate(self) -> None:
        self._check_types()

        def choose(name: str, value: str, options: tuple[str, ...]) -> None:
            if value not in options:
                raise UserError(f"bad {name} '{value}': choose one of {', '.join(options)}")

        choose("--head", self.head, HEADS)
        choose("--optimizer", self.optimizer, OPTIMIZERS)
        choose("--scheduler", self.scheduler, SCHEDULERS)
        choose("--precision", self.precision, PRECISIONS)
        choose("--init", self.init, INITS)
        choose("--cache", self.cache, CACHE_MODES)
        choose("--augment", self.augment, AUGMENTS)
        choose("--cache-dtype", self.cache_dtype, ("fp32", "fp16"))
        if not self.data:
            raise UserError("no training data given (--data)")
        if self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise UserError(f"--batch-size must be >= 2 (BatchNorm needs two samples), got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.eval_every < 1:
            raise UserError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise UserError(f"stop_after_epochs must be >= 1, got {self.stop_after_epochs}")
        # settings parsed later in the run are checked now, before any data is read or aligned
        from agebias.data.ages import AgeBins
        from agebias.finetune.freeze import parse_frozen_layers
        from agebias.finetune.hooks import create_hooks

        parse_frozen_layers(self.frozen_layers)
        self.head_kwargs()
        AgeBins.parse(self.age_bins)
        create_hooks(self.mitigation)

    # ---- (de)serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown finetune setting(s): {', '.join(unknown)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in values]
        if missing:
            raise UserError(f"finetune setting(s) missing: {', '.join(missing)}")
        return cls(**values)

    def training_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in NON_TRAINING_KEYS}

    def config_hash(self) -> str:
        blob = json.dumps(self.training_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def head_kwargs(self) -> dict[str, float]:
        """Keyword arguments of :func:`agebias.models.heads.create_head` from ``scale``/``margin``."""
        kw: dict[str, float] = {"scale": float(self.scale)}
        if self.margin in (None, ""):
            return kw
        try:
            values = [float(v) for v in str(self.margin).split(",")]
        except ValueError:
            raise UserError(f"bad --margin '{self.margin}': a number, or m1,m2,m3 for the combined head") from None
        if self.head == "combined":
            if len(values) == 3:
                kw.update(m1=values[0], m2=values[1], m3=values[2])
            elif len(values) == 1:
                kw["m2"] = values[0]
            else:
                raise UserError(f"bad --margin '{self.margin}' for the combined head: give m2 or m1,m2,m3")
        else:
            if len(values) != 1:
                raise UserError(f"bad --margin '{self.margin}' for {self.head}: give one number")
            kw["margin"] = values[0]
        return kw


def diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Training settings that differ between two config dicts (for the 'another run' error)."""
    keys = (set(a) | set(b)) - NON_TRAINING_KEYS
    return sorted(k for k in keys if json.dumps(a.get(k), default=str) != json.dumps(b.get(k), default=str))
