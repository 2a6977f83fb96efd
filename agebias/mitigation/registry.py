"""Mitigation methods by name: ``NAME[:key=value,...]``, e.g. ``label-flip:p=0.3`` or
``group-margin:margins=0.45/0.35/0.4``.

Each method is registered once, in its own module, with its one-line summary (shown by ``agebias finetune --help``),
its typed parameters (defaults and ranges) and its hooks class::

    @register_mitigation("label-flip", "FR-NAS label flip: ...", (Param("p", "float", 0.3, "fraction ...", 0, 1),))
    class LabelFlipHooks(MethodHooks): ...

:func:`parse_mitigation` checks a spec against the declaration and raises :class:`SettingsError` (field
``mitigation``) for unknown names, keys, badly typed or out-of-range values; :func:`create_hooks` builds the hooks.
Names are case-insensitive and ``_`` may stand for ``-``; list-valued parameters separate items with ``/``.
Importing :mod:`agebias.mitigation` registers the built-in methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from agebias.errors import SettingsError
from agebias.mitigation.base import MitigationSpec, TrainingHooks
from agebias.registry import Registry

HooksFactory = Callable[[MitigationSpec], TrainingHooks]
PARAM_TYPES = ("float", "int", "bool", "str", "floats")


@dataclass(frozen=True)
class Param:
    """A method parameter: ``type`` one of :data:`PARAM_TYPES` (``floats``: ``/``-separated numbers); ``low`` and
    ``high`` are inclusive bounds (each number of a ``floats`` list is checked)."""

    name: str
    type: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name}: type must be one of {PARAM_TYPES}, got {self.type!r}")


@dataclass(frozen=True)
class Method:
    """One registered method: what ``--help`` shows, what :func:`parse_mitigation` checks, what builds its hooks."""

    name: str
    summary: str
    params: tuple[Param, ...]
    hooks: HooksFactory


MITIGATIONS: Registry[Method] = Registry("mitigation", field="mitigation",
                                         normalise=lambda name: name.strip().lower().replace("_", "-"))


def register_mitigation(name: str, summary: str, params: Sequence[Param] = ()) -> Callable[[HooksFactory],
                                                                                          HooksFactory]:
    """Register ``factory(spec: MitigationSpec) -> TrainingHooks`` (usually a :class:`MethodHooks` subclass)."""

    def deco(factory: HooksFactory) -> HooksFactory:
        MITIGATIONS.register(name, Method(name, summary, tuple(params), factory))
        return factory

    return deco


register_mitigation("none", "no mitigation (plain margin-head training)")(lambda spec: TrainingHooks())


def describe_mitigations() -> str:
    """One line per method with its parameters and defaults (for ``--help``; no square brackets, which rich
    help text would take for markup)."""
    lines = []
    for name in MITIGATIONS.names():
        method = MITIGATIONS.get(name)
        keys = ", ".join(f"{p.name}={_fmt_default(p)}" for p in method.params)
        lines.append(f"{method.name}: {method.summary}" + (f"; keys: {keys}" if keys else ""))
    return "\n".join(lines)


def _fmt_default(p: Param) -> str:
    if p.type == "floats":
        return "/".join(str(v) for v in p.default) or "''"
    return str(p.default).lower() if p.type == "bool" else str(p.default)


def _bad(message: str) -> SettingsError:
    return SettingsError(message, field="mitigation")


def _convert(method: str, p: Param, raw: str) -> Any:
    raw = raw.strip()
    try:
        if p.type == "float":
            value: Any = float(raw)
        elif p.type == "int":
            value = int(raw)
        elif p.type == "bool":
            value = {"1": True, "true": True, "yes": True, "on": True,
                     "0": False, "false": False, "no": False, "off": False}[raw.lower()]
        elif p.type == "floats":
            value = tuple(float(v) for v in raw.split("/") if v.strip())
        else:
            value = raw
    except (ValueError, KeyError):
        kind = {"floats": "list of numbers separated by '/'", "bool": "true/false"}.get(p.type, p.type)
        raise _bad(f"{method}: {p.name}={raw!r} is not a valid {kind}") from None
    _check_range(method, p, value)
    return value


def _check_range(method: str, p: Param, value: Any) -> None:
    for v in value if isinstance(value, tuple) else (value,):
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if p.low is not None and p.high is not None and not p.low <= v <= p.high:
            raise _bad(f"{method}: {p.name} must be in [{p.low:g}, {p.high:g}], got {v:g}")
        if p.low is not None and v < p.low:
            raise _bad(f"{method}: {p.name} must be >= {p.low:g}, got {v:g}")
        if p.high is not None and v > p.high:
            raise _bad(f"{method}: {p.name} must be <= {p.high:g}, got {v:g}")


def parse_mitigation(spec: str | MitigationSpec | None) -> MitigationSpec:
    """``"ddl:bins=10,topk=8"`` -> ``MitigationSpec("ddl", {all params, defaults filled})``.

    ``None``/``""`` mean ``none``. Names are case-insensitive and ``_`` may stand for ``-``.
    """
    if isinstance(spec, MitigationSpec):
        return spec
    text = (spec or "none").strip()
    name, _, rest = text.partition(":")
    method = MITIGATIONS.get(name.strip() or "none")
    params = {p.name: p.default for p in method.params}
    by_name = {p.name: p for p in method.params}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise _bad(f"{method.name}: expected key=value, got '{item}'")
        if key not in by_name:
            raise _bad(f"'{method.name}' has no parameter '{key}'; its parameters: {', '.join(by_name) or 'none'}")
        params[key] = _convert(method.name, by_name[key], value)
    return MitigationSpec(method.name, params)


def create_hooks(spec: str | MitigationSpec | None) -> TrainingHooks:
    """``None``/``"none"`` -> no-op hooks; ``"NAME[:k=v,...]"`` -> the registered method's hooks (spec checked)."""
    parsed = parse_mitigation(spec)
    hooks = MITIGATIONS.get(parsed.name).hooks(parsed)
    if not isinstance(hooks, TrainingHooks):
        raise TypeError(f"mitigation factory '{parsed.name}' returned {type(hooks).__name__}, not TrainingHooks")
    return hooks
