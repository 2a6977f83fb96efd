"""Typer options derived from the settings dataclasses (:mod:`agebias.settings`): one definition per setting.

``@with_settings(config=FinetuneConfig)`` on a command function adds one option per command-line field of
``FinetuneConfig`` (flag ``--field-name`` unless the field names another, help and choices from the metadata,
the dataclass default as the option's default) and hands the function a validated ``config`` object. A
:class:`SettingsError` about one of those fields is re-worded with the flag (``--lr: must be > 0, got -1``).
``overrides=True`` makes every derived option default to None ("not given"), for commands whose settings come from
a file that the command line may override (``agebias search``); the function then gets a dict of given values.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, List, Optional

import typer

from agebias.errors import SettingsError
from agebias.settings import Settings, default_of, field_type, is_required, settings_fields


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _option(cls: type[Settings], f: dataclasses.Field, overrides: bool) -> tuple[Any, Any]:
    """(annotation, typer.Option) of one field."""
    ftype = field_type(cls, f.name)
    flag = flag_of(f)
    decls = [flag] + ([f.metadata["short"]] if f.metadata.get("short") else [])
    required = is_required(f)
    default = ... if required and not overrides else None if overrides else default_of(f)
    help_text = cls.describe(f.name)
    if ftype.base is bool and ftype.sequence is None:
        if overrides or ftype.optional or default is True:
            negative = "--no-" + flag[2:] if not flag.startswith("--no-") else "--" + flag[5:]
            decls[0] = f"{flag}/{negative}"
        annotation = Optional[bool] if (overrides or ftype.optional) else bool
        return annotation, typer.Option(default, *decls, help=help_text)
    if f.metadata.get("repeat"):
        base_default = None if overrides or required else list(default or [])
        return (Optional[List[str]] if base_default is None else List[str],
                typer.Option(... if required and not overrides else base_default, *decls, help=help_text,
                             metavar=f.metadata.get("metavar")))
    if ftype.sequence is not None or ftype.base is dict:
        # lists are given as comma-separated text on the command line
        text_default = default
        if isinstance(default, (list, tuple)):
            text_default = ",".join(str(v) for v in default)
        return Optional[str], typer.Option(text_default, *decls, help=help_text, metavar=f.metadata.get("metavar"),
                                           show_default=bool(text_default))
    base = ftype.base
    annotation = Optional[base] if (overrides or ftype.optional or required) else base
    return annotation, typer.Option(default, *decls, help=help_text, metavar=f.metadata.get("metavar"))


def with_settings(*, overrides: bool = False, exclude: tuple[str, ...] = (), include: tuple[str, ...] | None = None,
                  **classes: type[Settings]):
    """Decorator: derive options for each ``name=SettingsClass`` and pass the built object as argument ``name``.

    ``exclude`` names fields the command sets itself (they are not options); ``include`` keeps only the named
    fields (the others take their defaults). The decorated function's own parameters (arguments, command-only
    flags) stay as they are; names must not collide with field names."""

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
               if p.name not in classes]
        own_names = {p.name for p in own}
        derived: dict[str, list[dataclasses.Field]] = {}
        params = list(own)
        for key, cls in classes.items():
            fields = [f for f in settings_fields(cls, cli=True)
                      if f.name not in exclude and (include is None or f.name in include)]
            derived[key] = fields
            for f in fields:
                if f.name in own_names:
                    raise TypeError(f"{fn.__name__}: option '{f.name}' defined twice")
                own_names.add(f.name)
                annotation, option = _option(cls, f, overrides)
                params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                                annotation=annotation))

        @functools.wraps(fn)
        def wrapper(**kwargs):
            built = {}
            for key, cls in classes.items():
                given = {f.name: kwargs.pop(f.name) for f in derived[key]}
                if overrides:
                    built[key] = {k: v for k, v in given.items() if v is not None}
                    continue
                try:
                    required = {f.name for f in derived[key] if is_required(f)}
                    built[key] = cls(**{k: v for k, v in given.items() if not (v is None and k in required)})
                except SettingsError as err:
                    raise _with_flag(err, cls, derived[key]) from None
                except TypeError as err:  # a required option missing (typer normally catches it first)
                    raise SettingsError(str(err), stage=cls.stage) from None
            try:
                return fn(**kwargs, **built)
            except SettingsError as err:
                for key, cls in classes.items():
                    if err.stage == cls.stage:
                        raise _with_flag(err, cls, derived[key]) from None
                raise

        wrapper.__signature__ = sig.replace(parameters=_ordered(params))
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read the new signature, not the original one
        return wrapper

    return decorate


def _ordered(params: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """Positional parameters first, keyword-only after (typer only reads names and defaults)."""
    positional = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params
                  if p.kind != inspect.Parameter.KEYWORD_ONLY]
    keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params
               if p.kind == inspect.Parameter.KEYWORD_ONLY]
    return positional + keyword


def _with_flag(err: SettingsError, cls: type[Settings], fields: list[dataclasses.Field]) -> SettingsError:
    """The same error, worded with the command-line flag when the field is an option of this command."""
    by_name = {f.name: f for f in fields}
    if err.field in by_name:
        return err.reworded(f"{flag_of(by_name[err.field])}: {err.detail}")
    return err


def option_defaults(command: Callable) -> dict[str, Any]:
    """``{parameter name: default}`` of a command built with :func:`with_settings` (for consistency tests)."""
    out = {}
    for p in inspect.signature(command).parameters.values():
        default = p.default
        out[p.name] = getattr(default, "default", default)
    return out
