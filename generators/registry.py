"""Generators by name: the built-ins (``cardioid``, ``eg3d``, ``cusp``, ``diffusion``) plus any class a package
declares in the ``agebias.generators`` entry-point group, e.g. in its pyproject.toml::

    [project.entry-points."agebias.generators"]
    mygen = "mypkg.gen:MyGenerator"

Built-ins are imported lazily so that listing names does not import torch or diffusers.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from agebias.errors import UserError
from generators.base import Generator

ENTRY_POINT_GROUP = "agebias.generators"

_BUILTINS: dict[str, str] = {
    "cardioid": "generators.cardioid:CardioidGenerator",
    "eg3d": "generators.eg3d_age:EG3DAgeGenerator",
    "cusp": "generators.cusp:CUSPGenerator",
    "diffusion": "generators.diffusion:DiffusionGenerator",
}
_ALIASES = {"eg3d-age": "eg3d", "eg3d_age": "eg3d", "img2img": "diffusion"}
_registered: dict[str, type[Generator] | str] = {}


def register_generator(name: str, target: type[Generator] | str) -> None:
    """Register a class (or a lazy ``"module:Class"`` string) under ``name``."""
    _registered[name] = target


def _entry_points() -> dict[str, Any]:
    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)  # Python >= 3.10
    except TypeError:  # pragma: no cover
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    return {ep.name: ep for ep in eps}


def available_generators() -> list[str]:
    """Every generator name: built-ins, registered ones and entry points."""
    return sorted(set(_BUILTINS) | set(_registered) | set(_entry_points()))


def _load(target: Any, name: str) -> type[Generator]:
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(module_name), attr)
    elif hasattr(target, "load"):  # an importlib.metadata.EntryPoint
        try:
            obj = target.load()
        except Exception as err:
            raise UserError(f"generator '{name}' (entry point {target.value}) failed to load: {err}") from err
    else:
        obj = target
    if not (isinstance(obj, type) and issubclass(obj, Generator)) and not callable(getattr(obj, "from_config", None)):
        raise UserError(f"generator '{name}' is not a generators.base.Generator class")
    return obj


def get_generator_class(name: str) -> type[Generator]:
    """The class registered under ``name`` (aliases: eg3d-age, img2img). ``UserError`` for unknown names."""
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key in _registered:
        return _load(_registered[key], key)
    if key in _BUILTINS:
        return _load(_BUILTINS[key], key)
    eps = _entry_points()
    if key in eps:
        return _load(eps[key], key)
    raise UserError(f"unknown generator '{name}'; available: {', '.join(available_generators())}")


def create_generator(name: str, **options: Any) -> Generator:
    """Build a generator by name, like ``timm.create_model``: ``create_generator("cardioid", source_age=30)``."""
    cls = get_generator_class(name)
    try:
        return cls.from_config(**options)
    except TypeError as err:
        raise UserError(f"generator '{name}': bad option ({err})") from err
