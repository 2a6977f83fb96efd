"""Mitigation methods by name: ``NAME[:key=value,...]`` (e.g. ``label-flip:p=0.3``, ``group-margin:margins=0.45/0.35/0.4``).

Each method declares typed parameters with defaults and a one-line summary (shown by ``agebias finetune
--help``); :func:`parse_mitigation` checks a spec against them and raises :class:`UserError` for unknown names,
keys or badly typed values. List-valued parameters separate items with ``/``. The methods themselves live in one
small module each (``label_flip``, ``group_margin``, ``adversarial``, ``mixfair``, ``ddl``); the hook objects
the trainer calls are in :mod:`agebias.mitigation.hooks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agebias.errors import UserError


@dataclass(frozen=True)
class Param:
    name: str
    type: str  # "float" | "int" | "bool" | "str" | "floats"
    default: Any
    help: str


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    params: tuple[Param, ...]


@dataclass(frozen=True)
class MitigationSpec:
    """A parsed ``NAME[:key=value,...]``: the method name and every parameter (defaults filled in)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        def fmt(v: Any) -> str:
            return "/".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v).lower() \
                if isinstance(v, bool) else str(v)
        return self.name + (":" + ",".join(f"{k}={fmt(v)}" for k, v in self.params.items()) if self.params else "")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", "no mitigation (plain margin-head training)", ()),
    Method("label-flip", "FR-NAS label flip: per batch, relabel a fraction p of one age group's samples as "
           "another identity of that group", (
               Param("p", "float", 0.3, "fraction of the chosen group's samples relabelled per batch"),
               Param("group", "int", -1, "age group index to flip; -1 = a random group present in each batch"),
           )),
    Method("group-margin", "margin per age group (FR-NAS 'angular' with --head cosface: target logit "
           "s*(cos - m_g); with arcface cos(theta + m_g))", (
        Param("margins", "floats", (), "margin per age group, '/'-separated (cosine units for cosface; "
              "radians for arcface); empty = head margin + step*group"),
        Param("step", "float", 0.05, "when margins is empty: margin grows by step per group away from 'base'"),
        Param("base", "int", -1, "when margins is empty: group with the head's own margin; -1 = the middle group"),
    )),
    Method("adversarial", "SensitiveNets-style age-group adversary: group classifier on detached embeddings, "
           "penalty mean(log(1+|1/G - P(group)|)) after warm-up", (
               Param("weight", "float", 1.0, "penalty weight"),
               Param("warmup", "int", 50, "optimiser steps before the penalty starts (classifier warm-up)"),
               Param("hidden", "int", 64, "hidden units of the group classifier"),
               Param("disc_weight", "float", 1.0, "weight of the classifier's own loss (its learning-rate factor)"),
               Param("mlp", "bool", False, "insert a residual MLP between backbone and head (not exported with "
                     "backbone.pth)"),
           )),
    Method("mixfair", "MixFairFace adapter: per-sample margin shift (f_mix.f_b)^2-(f_mix.f_a)^2 from 50/50 "
           "feature-map mixing with a permuted partner", (
               Param("detach", "bool", True, "treat the shift as a constant margin (no gradient through it)"),
           )),
    Method("ddl", "distribution distillation: per-age-group batches, KL between soft histograms of pos/neg "
           "similarities (teacher group detached), order and entropy terms", (
               Param("weight", "float", 1.0, "weight of the DDL loss"),
               Param("bins", "int", 20, "histogram bins over [0, 1)"),
               Param("sigma", "float", 0.0, "Gaussian bump width; 0 = one bin width"),
               Param("topk", "int", 32, "hard negatives per branch (0 = all negative pairs)"),
               Param("teacher", "int", -1, "teacher age group; -1 = the best separated group in each batch"),
               Param("order", "float", 1.0, "weight of the order loss on mean(pos) - mean(neg)"),
               Param("entropy", "float", 0.0, "weight of the entropy term"),
               Param("per_identity", "int", 2, "images per identity in each group sub-batch"),
           )),
)}


def list_mitigations() -> list[str]:
    return list(METHODS)


def describe_mitigations() -> str:
    """One line per method with its parameters and defaults (for ``--help``; no square brackets, which rich
    help text would take for markup)."""
    lines = []
    for m in METHODS.values():
        keys = ", ".join(f"{p.name}={_fmt_default(p)}" for p in m.params)
        lines.append(f"{m.name}: {m.summary}" + (f"; keys: {keys}" if keys else ""))
    return "\n".join(lines)


def _fmt_default(p: Param) -> str:
    if p.type == "floats":
        return "/".join(str(v) for v in p.default) or "''"
    return str(p.default).lower() if p.type == "bool" else str(p.default)


def _convert(method: str, p: Param, raw: str) -> Any:
    raw = raw.strip()
    try:
        if p.type == "float":
            return float(raw)
        if p.type == "int":
            return int(raw)
        if p.type == "bool":
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if p.type == "floats":
            return tuple(float(v) for v in raw.split("/") if v.strip())
        return raw
    except ValueError:
        kind = {"floats": "list of numbers separated by '/'", "bool": "true/false"}.get(p.type, p.type)
        raise UserError(f"mitigation '{method}': {p.name}={raw!r} is not a valid {kind}") from None


def parse_mitigation(spec: str | MitigationSpec | None) -> MitigationSpec:
    """``"ddl:bins=10,topk=8"`` -> ``MitigationSpec("ddl", {all params, defaults filled})``.

    ``None``/``""`` mean ``none``. Names are case-insensitive and ``_`` may stand for ``-``.
    """
    if isinstance(spec, MitigationSpec):
        return spec
    spec = (spec or "none").strip()
    name, _, rest = spec.partition(":")
    name = name.strip().lower().replace("_", "-")
    if name not in METHODS:
        raise UserError(f"unknown mitigation '{name}'; choose one of: {', '.join(METHODS)}")
    method = METHODS[name]
    params = {p.name: p.default for p in method.params}
    by_name = {p.name: p for p in method.params}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise UserError(f"mitigation '{name}': expected key=value, got '{item}'")
        if key not in by_name:
            known = ", ".join(by_name) or "none"
            raise UserError(f"mitigation '{name}' has no parameter '{key}'; its parameters: {known}")
        params[key] = _convert(name, by_name[key], value)
    _validate(name, params)
    return MitigationSpec(name, params)


def _validate(name: str, params: dict[str, Any]) -> None:
    def bad(msg: str) -> None:
        raise UserError(f"mitigation '{name}': {msg}")

    if name == "label-flip" and not 0.0 <= params["p"] <= 1.0:
        bad(f"p must be in [0, 1], got {params['p']}")
    if name == "ddl":
        if params["bins"] < 2:
            bad("bins must be >= 2")
        if params["per_identity"] < 2:
            bad("per_identity must be >= 2 (positive pairs are needed)")
        if params["sigma"] < 0 or params["topk"] < 0:
            bad("sigma and topk must be >= 0")
    if name == "adversarial" and (params["warmup"] < 0 or params["hidden"] < 1 or params["disc_weight"] < 0):
        bad("warmup and disc_weight must be >= 0, hidden >= 1")
