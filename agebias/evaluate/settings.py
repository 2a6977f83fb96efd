"""Evaluation settings (everything that changes a number is recorded in results.json under ``settings``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from agebias.evaluate.grouping import DEFAULT_AGE_BINS, DEFAULT_GAP_BINS

CURVE_FMRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)


@dataclass
class EvalSettings:
    protocol: str = "all-pairs"            # all-pairs | msc
    target_fmr: float = 1e-3               # global operating point (ignored when threshold is set)
    threshold: float | None = None         # fixed tau instead of a target FMR
    alpha: float = 0.5                     # GARBE / FDR / IR weight of FMR
    age_bins: str = DEFAULT_AGE_BINS
    pair_grouping: str = "both"            # both | mean | gap
    gap_bins: str = DEFAULT_GAP_BINS
    fmr_targets: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    curve_fmrs: tuple[float, ...] = CURVE_FMRS
    bootstrap: int = 1000                  # subject resamples (0 = off)
    seed: int = 0
    confidence: float = 0.95
    instance_fpr: float = 1e-5             # MixFairFace instance-level operating point
    identification: str = "auto"           # auto (N <= 20000) | on | off
    block: int = 2048
    keep_all_pairs: int = 2_000_000        # above this many pairs the streamed two-pass engine is used
    max_accepted_pairs: int = 30_000_000   # cap on listed accepted impostor pairs (bootstrap, instance level)
    formats: tuple[str, ...] = ("png",)
    min_group_pairs: int = 30              # warn when a group has fewer genuine or impostor pairs

    def as_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EvalSettings":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("fmr_targets", "curve_fmrs", "formats"):
            if k in known and known[k] is not None:
                known[k] = tuple(known[k])
        return cls(**known)

