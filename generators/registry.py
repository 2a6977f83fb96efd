"""Generators by name: the built-ins (``cardioid``, ``eg3d``, ``cusp``, ``diffusion``) plus any class a package
declares in the ``agebias.generators`` entry-point group, e.g. in its pyproject.toml::

    [project.entry-points."agebias.generators"]
    mygen = "mypkg.gen:MyGenerator"

Built-ins are imported lazily so that listing names does not import torch or diffusers. Names are case-insensitive;
``eg3d-age``/``eg3d_age`` and ``img2img`` are aliases. Classes registered with :func:`register_generator` take
precedence over built-ins of the same name, and both over entry points.
"""

from __future__ import annotations

from typing import Any

from agebias.errors import UserError
from agebias.registry import Registry
from generators.base import Generator

ENTRY_POINT_GROUP = "agebias.generators"

GENERATORS: Registry[type[Generator]] = Registry(
    "generator", field="generator", entry_point_group=ENTRY_POINT_GROUP, normalise=str.lower,
    aliases={"eg3d-age": "eg3d", "eg3d_age": "eg3d", "img2img": "diffusion"})
GENERATORS.register_lazy("cardioid", "generators.cardioid:CardioidGenerator")
GENERATORS.register_lazy("eg3d", "generators.eg3d_age:EG3DAgeGenerator")
GENERATORS.register_lazy("cusp", "generators.cusp:CUSPGenerator")
GENERATORS.register_lazy("diffusion", "generators.diffusion:DiffusionGenerator")


def register_generator(name: str, target: type[Generator] | str) -> None:
    """Register a class (or a lazy ``"module:Class"`` string) under ``name``, replacing any earlier one."""
    if isinstance(target, str):
        GENERATORS.register_lazy(name, target, replace=True)
    else:
        GENERATORS.register(name, target, replace=True)


def available_generators() -> list[str]:
    """Every generator name: built-ins, registered ones and entry points (sorted)."""
    return sorted(GENERATORS.names())


def get_generator_class(name: str) -> type[Generator]:
    """The class registered under ``name``; :class:`agebias.errors.SettingsError` for unknown names."""
    obj = GENERATORS.get(name)
    if not (isinstance(obj, type) and issubclass(obj, Generator)) and not callable(getattr(obj, "from_config", None)):
        raise UserError(f"generator '{name}' is not a generators.base.Generator class")
    return obj


def create_generator(name: str, **options: Any) -> Generator:
    """Build a generator by name, like ``timm.create_model``: ``create_generator("cardioid", source_age=30)``."""
    cls = get_generator_class(name)
    try:
        return cls.from_config(**options)
    except TypeError as err:
        raise UserError(f"generator '{name}': bad option ({err})") from err
