"""Shared test setup: keep every cache (aligned crops etc.) inside a per-session temporary folder, never in ~."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_agebias_cache(tmp_path_factory):
    old = os.environ.get("AGEBIAS_CACHE")
    os.environ["AGEBIAS_CACHE"] = str(tmp_path_factory.mktemp("agebias-cache"))
    yield
    if old is None:
        os.environ.pop("AGEBIAS_CACHE", None)
    else:
        os.environ["AGEBIAS_CACHE"] = old


@pytest.fixture(autouse=True)
def _library_messages_on_stderr():
    """Tests that call library functions read their status lines on stderr, as the CLI shows them."""
    from agebias.console import configure
    from agebias.progress import is_quiet

    configure(quiet=is_quiet())
    yield
