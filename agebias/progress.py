"""Progress bars for long work (tqdm on stderr), silenced by ``agebias --quiet`` or ``AGEBIAS_QUIET=1``.

Bars draw only on a terminal: when stderr is a file or a pipe (a log, CI) tqdm's ``disable=None`` turns them off,
so logs are not flooded with carriage-return updates. Status lines go through :mod:`logging` (see
:mod:`agebias.console`), not through this module.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Iterable, Iterator, TypeVar

from tqdm.std import TqdmExperimentalWarning

with warnings.catch_warnings():  # what tqdm.auto picks (widget bars in Jupyter), without its asyncio import (30-80 ms)
    warnings.simplefilter("ignore", category=TqdmExperimentalWarning)
    from tqdm.autonotebook import tqdm

T = TypeVar("T")
_quiet = False


def set_quiet(value: bool) -> None:
    global _quiet
    _quiet = bool(value)


def is_quiet() -> bool:
    return _quiet or os.environ.get("AGEBIAS_QUIET", "") not in ("", "0")


def _disable() -> bool | None:
    """Off when quiet and on torchrun ranks other than 0; None: tqdm disables itself when stderr is not a
    terminal."""
    from agebias.distributed import from_env

    return True if is_quiet() or from_env().rank > 0 else None


def track(iterable: Iterable[T], description: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate with a progress bar (ETA included) on a terminal, unless quiet."""
    return iter(tqdm(iterable, desc=description, total=total, unit=unit, disable=_disable(), file=sys.stderr,
                     dynamic_ncols=True, leave=False))


def bar(total: int | None, description: str = "", unit: str = "it") -> tqdm:
    """A manual progress bar: ``with bar(n, "embedding") as b: b.update(k)`` (drawn on a terminal, unless quiet).

    Work of a single step (``total`` 1, e.g. all pairs of a small set in one tile) gets no bar: it could only sit
    at 0/1 and then vanish."""
    single_step = total is not None and total <= 1
    return tqdm(total=total, desc=description, unit=unit, disable=True if single_step else _disable(),
                file=sys.stderr, dynamic_ncols=True, leave=False)
