"""The search space of ``agebias search``: parsed from the experiment file's ``[space]`` table.

Each entry is one searched parameter::

    [space]
    lr            = { type = "float", low = 1e-3, high = 1e-1, log = true }
    depth3        = { type = "int", low = 1, high = 3 }            # optional: step = 1
    head          = { type = "categorical", choices = ["arcface", "cosface"] }
    frozen_layers = ["", "1", "1,2"]                               # a bare list is a categorical

Names with a meaning beyond a finetune setting:

- ``arch``: the backbone architecture (``iresnet50``, ``iresnet:1,1,2,1@16,32,64,128``, ``timm:<name>``);
- ``depth1`` .. ``depth4``, ``width``: iresnet stage depths and base width (stages ``w, 2w, 4w, 8w``); any of them
  builds ``arch = iresnet:d1,d2,d3,d4@w,2w,4w,8w``, the others taken from the fixed architecture
  (``[finetune] backbone``/``arch`` when it is an ``iresnet:`` spec; else depth 1 and width 16);
- ``mitigation``: a method name or full spec (``ddl:bins=10``); ``mitigation_weight``: the chosen method's
  strength (``adversarial``/``ddl``: ``weight``; ``label-flip``: ``p``; ``group-margin``: ``step``; ignored for
  ``none`` and ``mixfair``);
- ``synthetic_weight`` / ``real_weight``: per-epoch share of the ``[data] synthetic`` / ``real`` source
  (``agebias finetune --data PATH:WEIGHT``; 0 leaves the source out).

Every other name must be a :class:`agebias.finetune.config.FinetuneConfig` field (``head``, ``margin``,
``scale``, ``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``frozen_layers``, ``batch_size``, ``epochs``...).
``timm:`` architectures have no stages to freeze: for them ``frozen_layers`` is set to ``""``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

from agebias.errors import UserError
from agebias.models.registry import list_backbones, parse_iresnet_spec

SPECIAL = ("arch", "depth1", "depth2", "depth3", "depth4", "width", "mitigation", "mitigation_weight",
           "synthetic_weight", "real_weight")
STRENGTH_KEY = {"adversarial": "weight", "ddl": "weight", "label-flip": "p", "group-margin": "step"}


@dataclass(frozen=True)
class Dim:
    """One searched parameter: ``kind`` is ``categorical`` (``choices``), ``int`` or ``float`` (``low``..``high``,
    both inclusive; optional ``step``; ``log`` for a log-uniform scale)."""

    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for a value."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


def _finetune_fields() -> set[str]:
    from agebias.finetune.config import FinetuneConfig

    return {f.name for f in dataclasses.fields(FinetuneConfig)}


def parse_dim(name: str, raw: Any) -> Dim:
    """One ``[space]`` entry -> :class:`Dim` (raises :class:`UserError` with the entry's name)."""
    where = f"[space] {name}"
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table {{type = ..., ...}} or a list of choices, got {raw!r}")
    kind = str(raw.get("type", "categorical" if "choices" in raw else "")).lower()
    aliases = {"cat": "categorical", "choice": "categorical", "integer": "int", "real": "float", "uniform": "float",
               "log": "float", "loguniform": "float"}
    log = bool(raw.get("log", kind in ("log", "loguniform")))
    kind = aliases.get(kind, kind)
    unknown = set(raw) - {"type", "choices", "low", "high", "step", "log"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use type, choices, low, high, step, log")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: a categorical needs a non-empty list 'choices'")
        if any(not isinstance(c, (str, int, float, bool)) for c in choices):
            raise UserError(f"{where}: choices must be strings, numbers or booleans")
        return Dim(name, "categorical", tuple(choices))
    if kind not in ("int", "float"):
        raise UserError(f"{where}: type must be categorical, int or float (got '{raw.get('type')}')")
    try:
        low, high = float(raw["low"]), float(raw["high"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: an {kind} parameter needs numbers 'low' and 'high'") from None
    step = raw.get("step")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise UserError(f"{where}: need finite low <= high, got {low}..{high}")
    if log and low <= 0:
        raise UserError(f"{where}: a log scale needs low > 0")
    if log and step is not None:
        raise UserError(f"{where}: 'step' and 'log' cannot be combined")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise UserError(f"{where}: int bounds must be whole numbers")
    return Dim(name, kind, low=low, high=high, step=None if step is None else float(step), log=log)


@dataclass(frozen=True)
class SearchSpace:
    dims: tuple[Dim, ...]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def suggest(self, trial: Any) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dims}


def parse_space(table: dict[str, Any]) -> SearchSpace:
    """The ``[space]`` table -> :class:`SearchSpace`; unknown names are a :class:`UserError`."""
    if not isinstance(table, dict) or not table:
        raise UserError("the experiment file needs a non-empty [space] table naming the searched parameters")
    allowed = _finetune_fields() | set(SPECIAL)
    for name in table:
        if name not in allowed:
            raise UserError(f"[space] {name}: not a search parameter; use one of {', '.join(SPECIAL)} or a finetune "
                            "setting (head, margin, lr, optimizer, frozen_layers, ...)")
        if name in ("data", "out", "backbone", "init"):
            raise UserError(f"[space] {name}: cannot be searched (set it in [data] / [finetune])")
    dims = tuple(parse_dim(n, v) for n, v in table.items())
    _check_choices(dims)
    return SearchSpace(dims)


def _check_choices(dims: Sequence[Dim]) -> None:
    """Validate names that can be checked before training: architectures and mitigation specs."""
    from agebias.mitigation.registry import parse_mitigation

    for d in dims:
        if d.name == "mitigation":
            for c in d.choices:
                parse_mitigation(str(c))
        if d.name == "arch":
            for c in d.choices:
                check_arch(str(c))


def check_arch(name: str) -> None:
    """Raise :class:`UserError` unless ``name`` is a buildable architecture (timm names checked if installed)."""
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise UserError(f"architecture '{name}' needs timm: pip install 'agebias[search]'") from None
        if not timm.list_models(name[len("timm:"):]):
            raise UserError(f"unknown timm architecture '{name}'")
        return
    if name.startswith("iresnet:"):
        parse_iresnet_spec(name)
        return
    if name not in list_backbones():
        raise UserError(f"unknown architecture '{name}'; choose one of: {', '.join(list_backbones())}")


def compose_arch(params: dict[str, Any], base_arch: str | None) -> str | None:
    """The architecture a trial trains: ``arch`` if searched, rebuilt from ``depthN``/``width`` when those are."""
    arch = params.get("arch", base_arch)
    keys = ("depth1", "depth2", "depth3", "depth4", "width")
    if not any(k in params for k in keys):
        return arch
    depths, widths = ([1, 1, 1, 1], [16, 32, 64, 128])
    if arch and str(arch).startswith("iresnet:"):
        depths, widths = parse_iresnet_spec(str(arch))
    for i in range(4):
        depths[i] = int(params.get(f"depth{i + 1}", depths[i]))
    if "width" in params:
        w = int(params["width"])
        widths = [w, 2 * w, 4 * w, 8 * w]
    return f"iresnet:{','.join(map(str, depths))}@{','.join(map(str, widths))}"


def mitigation_spec(params: dict[str, Any], base: str | None) -> str | None:
    """The trial's ``--mitigation`` spec: the searched (or fixed) method, with ``mitigation_weight`` merged in."""
    from agebias.mitigation.registry import parse_mitigation

    spec = params.get("mitigation", base)
    if "mitigation_weight" not in params or spec in (None, "", "none"):
        return spec
    parsed = parse_mitigation(str(spec))
    key = STRENGTH_KEY.get(parsed.name)
    if key is None:
        return str(parsed)
    value = float(params["mitigation_weight"])
    if key == "p":
        value = min(max(value, 0.0), 1.0)
    return str(type(parsed)(parsed.name, {**parsed.params, key: value}))
