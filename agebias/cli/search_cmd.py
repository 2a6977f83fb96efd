"""`agebias search`: not built yet (placeholder registered so `agebias --help` lists it)."""

from __future__ import annotations

import typer

from agebias.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("search", help="(not built yet)", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def _placeholder() -> None:
        raise UserError("'agebias search' is not built yet")
