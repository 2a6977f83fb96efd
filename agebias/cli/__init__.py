"""The ``agebias`` command line: a thin typer layer over the library.

Each command group lives in its own module here and is attached below. Errors a user can cause raise
:class:`agebias.errors.UserError`; :func:`main` prints them as one line and exits with code 2.
"""

from __future__ import annotations

import sys

import click
import typer

from agebias.errors import UserError
from agebias.progress import set_quiet

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


def _attach() -> None:
    """Attach every command module; each exposes ``register(app)``."""
    from agebias.cli import (align_cmd, datasets_cmd, doctor_cmd, embed_cmd, evaluate_cmd, finetune_cmd,
                             generate_cmd, run_cmd, search_cmd)

    for module in (generate_cmd, finetune_cmd, evaluate_cmd, embed_cmd, align_cmd, datasets_cmd, search_cmd,
                   run_cmd, doctor_cmd):
        module.register(app)


_attach()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns the exit code: 0 ok, 1 finished but something was skipped or failed
    (the command says what), 2 user error (one line on stderr), 130 interrupted."""
    try:
        result = app(args=argv, standalone_mode=False)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except click.exceptions.ClickException as err:  # bad option, missing argument, unreadable path
        print(f"error: {err.format_message()}", file=sys.stderr)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("interrupted: finished outputs are kept; run the same command again to resume", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
