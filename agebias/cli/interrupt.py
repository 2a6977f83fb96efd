"""The line a command prints when it is interrupted (Ctrl-C, exit code 130): what was saved and the exact command
that resumes.

A command whose work survives an interruption says so before its long part: ``on_interrupt("completed epochs are
checkpointed in run/", add=("--resume",))``. :func:`agebias.cli.main` resets the hint at the start of every call and
prints :func:`interrupted_message` when the call ends with ``KeyboardInterrupt``; ``add`` holds the options the
resuming command needs beyond the interrupted one (given once, even when they were already there).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Sequence

_hint: tuple[str, tuple[str, ...]] | None = None


def on_interrupt(saved: str, *, add: Sequence[str] = ()) -> None:
    """Declare what an interruption of the running command leaves (``saved``) and the options to add to resume."""
    global _hint
    _hint = (saved, tuple(add))


def clear() -> None:
    global _hint
    _hint = None


def program() -> str:
    """How the user started agebias: ``python -m agebias`` or the ``agebias`` script."""
    started = Path(sys.argv[0])
    return "python -m agebias" if (started.parent.name, started.name) == ("agebias", "__main__.py") else "agebias"


def interrupted_message(argv: Sequence[str]) -> str:
    """One line: what was saved and the command to run again (``argv``: the interrupted command's arguments)."""
    if _hint is None:
        return "interrupted: nothing was saved; run the same command again to start over"
    saved, add = _hint
    args = list(argv) + [a for a in add if a not in argv]
    return f"interrupted: {saved}; to resume, run: {program()} {shlex.join(args)}"
