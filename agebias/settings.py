"""One definition per setting: typed dataclasses whose field metadata carries help, choices and validation.

Each stage (generate, finetune, evaluate, embed, search) has one :class:`Settings` dataclass. Its fields are made with
:func:`setting`, which records the help text, the allowed choices, a check, the command-line flag and whether
experiment files (TOML) may set it. From that single definition:

- the Python API builds and validates it directly (``FinetuneConfig(data=..., backbone=..., out=...)``);
- the command line derives its typer options (:mod:`agebias.cli.options`), so flags, defaults and help cannot drift;
- experiment files derive their schema (:meth:`Settings.from_dict` with ``source=`` names the file and table);
- validation runs in the dataclass (``__post_init__``) whichever route built it, and every message names the field
  (:class:`agebias.errors.SettingsError`; the CLI adds the flag's spelling).

Values are coerced the same way on every route: a number for a float field, a comma-separated string or a list for a
list field, ``""`` for "not set" in an optional field (TOML has no null).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

from agebias.errors import SettingsError, UserError

Check = Callable[[Any], None]  # raises ValueError(reason) for a bad value


def setting(default: Any = MISSING, *, help: str, choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
            check: Check | None = None, flag: str | None = None, short: str | None = None, cli: bool = True,
            toml: bool = True, training: bool = True, default_factory: Callable[[], Any] | None = None,
            repeat: bool = False, metavar: str | None = None, number_as_text: bool = False) -> Any:
    """A dataclass field with its help, choices (a list, or a function returning the registry's current names),
    check, flag (default ``--field-name``), and where it may be set: ``cli`` (a command-line option), ``toml``
    (experiment files). ``training=False`` marks settings that do not change trained weights (not hashed).
    ``repeat=True``: a list option given by repeating the flag (``--data a --data b``) as well as by commas.
    ``number_as_text=True``: a text field that also accepts a number (``margin = 0.5`` or ``"1.0,0.5,0.0"``)."""
    meta = {"help": help, "choices": choices, "check": check, "flag": flag, "short": short, "cli": cli,
            "toml": toml, "training": training, "repeat": repeat, "metavar": metavar,
            "number_as_text": number_as_text}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------------- checks
def at_least(low: float) -> Check:
    def check(value):
        if value is not None and value < low:
            raise ValueError(f"must be >= {low:g}, got {value!r}")
    return check


def positive(value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"must be > 0, got {value!r}")


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """low <= value <= high (``low_open``/``high_open`` exclude the ends)."""
    def check(value):
        if value is None:
            return
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise ValueError(f"must lie in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return check


def each(check: Check) -> Check:
    """Apply ``check`` to every item of a list value."""
    def run(values):
        for v in values or ():
            check(v)
    return run


# ----------------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class FieldType:
    """What a field holds: ``base`` (str, int, float, bool, dict), ``sequence`` (list or tuple of ``base``) or not,
    and whether None is allowed."""

    base: type
    sequence: type | None = None
    optional: bool = False

    @classmethod
    def of(cls, annotation: Any) -> "FieldType":
        optional = False
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            optional = len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                raise TypeError(f"unsupported settings type {annotation!r}")
            annotation = args[0]
            origin = typing.get_origin(annotation)
        if origin in (list, tuple):
            item = typing.get_args(annotation)[0]
            return cls(item, origin, optional)
        if origin is dict or annotation is dict:
            return cls(dict, None, optional)
        return cls(annotation, None, optional)

    def describe(self) -> str:
        names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", dict: "a table"}
        text = names.get(self.base, self.base.__name__)
        if self.sequence is not None:
            text = f"a list of {text.split(' ', 1)[1]}s (or a comma-separated string)"
        return text + (" or empty" if self.optional else "")

    def coerce(self, value: Any) -> Any:
        """The value in this type, or ValueError. Strings are split on commas for lists; '' means None."""
        if value is None or (self.optional and value == "" and self.base is not str):
            if self.optional:
                return None
            raise ValueError("must be set")
        if self.optional and self.base is str and value == "":
            return None
        if self.sequence is not None:
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, (list, tuple)):
                items = list(value)
            else:
                raise ValueError(f"must be {self.describe()}, got {value!r}")
            return self.sequence(_scalar(self.base, v, from_text=isinstance(v, str)) for v in items)
        return _scalar(self.base, value)


def _scalar(base: type, value: Any, from_text: bool = False) -> Any:
    """``value`` as ``base``; text is parsed only for list items (``"10,15"``), never for a single setting."""
    if base is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise ValueError(f"must be true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ValueError(f"must be a whole number, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if from_text:
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ValueError(f"must be a whole number, got {value!r}")
    if base is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif from_text:
            try:
                number = float(value.strip())
            except ValueError:
                pass
        if number is None:
            raise ValueError(f"must be a number, got {value!r}")
        if not math.isfinite(number):  # NaN passes every comparison check, and no setting means infinity
            raise ValueError(f"must be a finite number, got {value!r}")
        return number
    if base is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise ValueError(f"must be a string, got {value!r}")
    if base is dict:
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return dict(_key_value(v) for v in value)
        raise ValueError(f"must be a table of options (or KEY=VALUE items), got {value!r}")
    raise TypeError(f"unsupported settings type {base!r}")


def _key_value(item: str) -> tuple[str, Any]:
    """``"steps=20"`` -> ``("steps", 20)``: the value read as JSON when it parses, else kept as text."""
    import json

    if "=" not in item:
        raise ValueError(f"{item!r} is not KEY=VALUE")
    key, value = item.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


# ----------------------------------------------------------------------------------------------------- base
@dataclass
class Settings:
    """Base of every stage's settings. Subclasses set ``stage`` (a name used in messages) and may override
    :meth:`check` for rules that involve several fields (raise :class:`SettingsError` with ``field=``)."""

    stage: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ftype = field_type(type(self), f.name)
            try:
                if f.metadata.get("number_as_text") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = f"{value:g}"  # e.g. margin = 0.5 in TOML for a field that also takes "m1,m2,m3"
                value = ftype.coerce(value)
                choices = _choices(f)
                if choices is not None:
                    for v in (value if ftype.sequence is not None else [value]):
                        if v is not None and v not in choices:
                            raise ValueError(f"unknown value {v!r}; choose one of: {', '.join(map(str, choices))}")
                if f.metadata.get("check") is not None:
                    f.metadata["check"](value)
            except (ValueError, UserError) as err:  # SettingsError is both; UserError from parsers such as AgeBins
                detail = err.detail if isinstance(err, SettingsError) else str(err)
                raise SettingsError(detail, field=f.name, stage=self.stage) from None
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Rules across fields (override); single-field rules live in the field metadata."""

    # -- construction from files and dicts --
    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str | None = None, allowed: Iterable[str] | None = None):
        """Build from a plain dict (experiment file table, JSON). Unknown keys, and keys outside ``allowed`` (the
        keys this route may set), are refused in one line that names ``source`` (e.g. ``demo.toml [finetune]``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        allowed_set = set(allowed) if allowed is not None else names
        where = f"{source}: " if source else ""
        for key in values:
            if key not in names:
                raise SettingsError(f"{where}{unknown_setting(key, allowed_set, cls.stage)}", stage=cls.stage)
            if key not in allowed_set:
                raise SettingsError(f"{where}'{key}' cannot be set here", field=key, stage=cls.stage)
        missing = [f.name for f in dataclasses.fields(cls) if is_required(f) and f.name not in values]
        if missing:
            raise SettingsError(f"{where}missing required setting(s): {', '.join(missing)}", field=missing[0],
                                stage=cls.stage)
        try:
            return cls(**values)
        except SettingsError as err:
            if source:
                raise err.reworded(f"{source}: {err}") from None
            raise

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self, **changes: Any):
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every field's default (required fields left out)."""
        return {f.name: default_of(f) for f in dataclasses.fields(cls) if not is_required(f)}

    @classmethod
    def describe(cls, name: str) -> str:
        """The help text of one field, with its fixed choices."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")  # a registry's names (a function) are checked, not listed: the help
        if isinstance(choices, (list, tuple)) and len(choices) <= 12:  # text names them, importing nothing
            several = field_type(cls, name).sequence is not None
            text += f" ({'any of' if several else 'one of'}: {', '.join(map(str, choices))})"
        return text


def unknown_setting(key: str, known: Iterable[str], stage: str | None = None) -> str:
    """The message for a setting name that does not exist: the closest known name, then all of them."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {stage + ' ' if stage else ''}setting '{key}'{hint}; known: {', '.join(known)}"


def _choices(f: dataclasses.Field) -> Sequence[Any] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def is_required(f: dataclasses.Field) -> bool:
    """A field without a default (the caller must give it)."""
    return f.default is MISSING and f.default_factory is MISSING


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


_HINTS: dict[type, dict[str, Any]] = {}


def field_type(cls: type, name: str) -> FieldType:
    """The :class:`FieldType` of ``cls.name`` (annotations resolved once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = {k: FieldType.of(v) for k, v in typing.get_type_hints(cls).items()
                       if not k.startswith("_") and typing.get_origin(v) is not ClassVar and v is not ClassVar}
    return _HINTS[cls][name]


def settings_fields(cls: type, *, cli: bool | None = None, toml: bool | None = None) -> list[dataclasses.Field]:
    """Fields of a settings class, optionally only those settable on the command line / in experiment files."""
    out = []
    for f in dataclasses.fields(cls):
        if cli is not None and bool(f.metadata.get("cli", True)) != cli:
            continue
        if toml is not None and bool(f.metadata.get("toml", True)) != toml:
            continue
        out.append(f)
    return out
