"""Where the library's log messages go when a command line (or a test) asks for them.

The library logs through :mod:`logging` (``logging.getLogger(__name__)`` in each module, under the ``agebias`` and
``generators`` loggers) and never configures it: a notebook sees nothing unless it asks, for example with
``agebias.console.configure()``. The CLI calls :func:`configure` once per command: INFO lines on stderr, or
warnings only with ``--quiet`` / ``AGEBIAS_QUIET=1``. Under torchrun, processes other than rank 0 show
warnings and errors only, prefixed ``[rank K]`` (rank 0 reports for all). Progress bars are separate
(:mod:`agebias.progress`).
"""

from __future__ import annotations

import logging
import sys

from agebias.distributed import from_env

LOGGERS = ("agebias", "generators")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always reads sys.stderr
        pass


def _not_silenced(record: logging.LogRecord) -> bool:
    """``--quiet`` / ``AGEBIAS_QUIET=1`` and torchrun ranks other than 0 keep warnings and errors only (checked
    per record)."""
    from agebias.progress import is_quiet

    return record.levelno >= logging.WARNING or not (is_quiet() or from_env().rank > 0)


class _Formatter(logging.Formatter):
    """Plain messages; warnings and errors carry their level as a prefix (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        rank = from_env().rank
        return f"[rank {rank}] {text}" if rank > 0 else text


def configure(quiet: bool = False) -> None:
    """Show INFO lines (warnings only when ``quiet``) of the agebias loggers on stderr; idempotent."""
    level = logging.WARNING if quiet else logging.INFO
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(_Formatter())
            handler.addFilter(_not_silenced)
            logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
