"""The ``agebias`` command line: a thin typer layer over the library.

Each command group lives in its own module here and is attached below. Errors a user can cause raise
:class:`agebias.errors.UserError`; :func:`main` prints them as one line and exits with code 2.
"""

from __future__ import annotations

import gc
import sys

import typer

from agebias.cli import interrupt
from agebias.console import configure as configure_logging
from agebias.distributed import ShareDone
from agebias.errors import UserError
from agebias.progress import is_quiet, set_quiet

app = typer.Typer(
    name="agebias",
    help="Measure and reduce age bias in face recognition with synthetic age-varied faces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or status lines.")) -> None:
    """Measure and reduce age bias in face recognition with synthetic age-varied faces."""
    set_quiet(quiet)
    configure_logging(quiet=is_quiet())


def _attach() -> None:
    """Attach every command module; each exposes ``register(app)``."""
    from agebias.cli import (align_cmd, datasets_cmd, doctor_cmd, embed_cmd, estimate_age_cmd, evaluate_cmd,
                             finetune_cmd, generate_cmd, qc_cmd, run_cmd, search_cmd)

    for module in (generate_cmd, qc_cmd, finetune_cmd, evaluate_cmd, embed_cmd, estimate_age_cmd, align_cmd,
                   datasets_cmd, search_cmd, run_cmd, doctor_cmd):
        module.register(app)


_attach()


def _cli_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts) of the click that typer uses: its vendored copy (typer >= 0.29) and/or click."""
    usage: list[type] = []
    aborts: list[type] = [KeyboardInterrupt]
    try:
        from typer._click import exceptions as vendored

        usage.append(vendored.ClickException)
    except ImportError:
        pass
    try:
        import click

        usage.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:
        pass
    aborts.append(getattr(typer, "Abort", KeyboardInterrupt))
    return tuple(usage), tuple(aborts)


_USAGE_ERRORS, _ABORTS = _cli_exceptions()
INTERRUPTED = 130  # exit code of an interrupted command (128 + SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the exit code: 0 ok, 1 finished but something was skipped or failed
    (the command says what; under torchrun only rank 0 reports, the other ranks exit 0 once their share is
    written), 2 user error (one line on stderr), 130 interrupted (one line: what was saved and the
    command that resumes, see :mod:`agebias.cli.interrupt`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    interrupt.clear()
    try:
        result = app(args=args, standalone_mode=False)
    except ShareDone:  # torchrun: this process's share is written; rank 0 merges and reports
        return 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except _USAGE_ERRORS as err:  # bad option, missing argument, unreadable path
        message = err.format_message().strip()
        if type(err).__name__ == "NoArgsIsHelpError":  # the help was already shown
            if message:
                print(message, file=sys.stderr)
            return 0
        print(f"error: {message}", file=sys.stderr)
        return 2
    except _ABORTS:
        print(interrupt.interrupted_message(args), file=sys.stderr)
        return INTERRUPTED
    finally:
        set_quiet(False)  # --quiet applies to this call only (main() may be called again in the same process)
        configure_logging(quiet=is_quiet())
    if result == INTERRUPTED:  # typer >= 0.29 turns KeyboardInterrupt into this exit code (no command returns it)
        print(interrupt.interrupted_message(args), file=sys.stderr)
    return result if isinstance(result, int) else 0


def run() -> None:
    """The ``agebias`` program (console script and ``python -m agebias``): :func:`main` on ``sys.argv``, then exit
    with its code. What is left is first frozen out of the garbage collector, because the interpreter's collections
    at exit would walk every object torch and numba made (0.2-0.4 s at the end of each command); the system takes
    the memory back when the process ends. Output files are complete before this point: each is written atomically
    and closed by the command."""
    code = main()
    gc.freeze()
    sys.exit(code)

