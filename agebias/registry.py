"""Name -> object registries (backbones, heads, embedders, mitigation methods, generators), as timm's
``create_model`` looks models up by name.

A :class:`Registry` maps names to objects, usually factories or classes::

    HEADS = Registry("head", field="head")

    @HEADS.register("arcface")
    class ArcFaceHead(MarginHead): ...

    HEADS.get("arcface")            # -> ArcFaceHead; unknown names raise SettingsError listing the known ones

``register_lazy(name, "module:attr")`` imports its target on first lookup (built-ins that pull in heavy packages).
With an ``entry_point_group``, names that installed packages declare in that Python entry-point group are found
too and loaded on first lookup; registered names take precedence over entry points. Names are normalised by
``normalise`` (default: unchanged) and then mapped through ``aliases``.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

from agebias.errors import SettingsError, UserError

T = TypeVar("T")


class _Lazy:
    """A ``"module:attr"`` target, imported when first looked up."""

    def __init__(self, target: str):
        module, sep, attr = target.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"lazy registry target must be 'module:attr', got {target!r}")
        self.module, self.attr = module, attr

    def load(self) -> Any:
        obj: Any = importlib.import_module(self.module)
        for part in self.attr.split("."):
            obj = getattr(obj, part)
        return obj


class Registry(Generic[T]):
    """Objects by name.

    ``kind`` names what is registered in messages (``"unknown head 'x'; choose one of: arcface, ..."``); ``field``
    is the setting that holds the name (given to :class:`SettingsError`); ``hints`` are extra accepted forms shown
    in that message (e.g. ``timm:<name>``), resolved by the caller.
    """

    def __init__(self, kind: str, *, field: str | None = None, entry_point_group: str | None = None,
                 aliases: Mapping[str, str] | None = None, normalise: Callable[[str], str] | None = None,
                 hints: Sequence[str] = ()):
        self.kind = kind
        self.field = field
        self.entry_point_group = entry_point_group
        self.aliases = dict(aliases or {})
        self.hints = tuple(hints)
        self._normalise = normalise
        self._items: dict[str, T | _Lazy] = {}

    def key(self, name: str) -> str:
        """The registry key for ``name``: normalised, then mapped through the aliases."""
        key = self._normalise(name) if self._normalise else name
        return self.aliases.get(key, key)

    def register(self, name: str, obj: Any = None, *, replace: bool = False) -> Any:
        """``register(name, obj)`` registers and returns ``obj``; ``@register(name)`` decorates.

        Registering a taken name raises ``ValueError`` (a programming error) unless ``replace=True``.
        """
        if obj is None:
            return lambda target: self.register(name, target, replace=replace)
        key = self.key(name)
        if key in self._items and not replace:
            raise ValueError(f"{self.kind} '{key}' is already registered")
        self._items[key] = obj
        return obj

    def register_lazy(self, name: str, target: str, *, replace: bool = False) -> None:
        """Register ``"module:attr"``, imported on first :meth:`get`."""
        self.register(name, _Lazy(target), replace=replace)

    def entry_points(self) -> dict[str, metadata.EntryPoint]:
        """Entry points of installed packages in ``entry_point_group`` (empty without a group), by name."""
        if not self.entry_point_group:
            return {}
        return {ep.name: ep for ep in metadata.entry_points(group=self.entry_point_group)}

    def names(self) -> list[str]:
        """Registered names in registration order, then entry-point names not registered here (sorted)."""
        return list(self._items) + sorted(set(self.entry_points()) - set(self._items))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = self.key(name)
        return key in self._items or key in self.entry_points()

    def get(self, name: str) -> T:
        """The object registered under ``name``; :class:`SettingsError` naming the known names when unknown."""
        key = self.key(name) if isinstance(name, str) else name
        if key in self._items:
            item = self._items[key]
            return item.load() if isinstance(item, _Lazy) else item
        ep = self.entry_points().get(key) if isinstance(key, str) else None
        if ep is None:
            known = ", ".join([*self.names(), *self.hints]) or "none registered"
            raise SettingsError(f"unknown {self.kind} '{name}'; choose one of: {known}", field=self.field)
        try:
            return ep.load()
        except Exception as err:  # a third-party plugin may fail in any way while importing
            reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"{self.kind} '{key}' (entry point {ep.value}) failed to load: {reason}") from err

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()!r})"
