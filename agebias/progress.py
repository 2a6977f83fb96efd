"""Progress bars for long work (tqdm on stderr), silenced by ``agebias --quiet`` or ``AGEBIAS_QUIET=1``."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_quiet = False


def set_quiet(value: bool) -> None:
    global _quiet
    _quiet = bool(value)


def is_quiet() -> bool:
    return _quiet or os.environ.get("AGEBIAS_QUIET", "") not in ("", "0")


def track(iterable: Iterable[T], description: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with a progress bar (ETA included) unless quiet."""
    return iter(tqdm(iterable, desc=description, total=total, unit=unit, disable=is_quiet(), file=sys.stderr,
                     dynamic_ncols=True, leave=False))


def bar(total: int | None, description: str = "", unit: str = "it") -> tqdm:
    """A manual progress bar: ``with bar(n, "embedding") as b: b.update(k)``."""
    return tqdm(total=total, desc=description, unit=unit, disable=is_quiet(), file=sys.stderr, dynamic_ncols=True,
                leave=False)


def info(message: str) -> None:
    """A status line on stderr (kept even when quiet is off; suppressed when quiet)."""
    if not is_quiet():
        print(message, file=sys.stderr)
