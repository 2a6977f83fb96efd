"""``torchrun ... tests/helpers_torchrun_die.py ARGS``: run ``agebias ARGS`` in which rank 0 dies (exit code 3,
no clean-up) when it reaches ``$DIE_AT`` (``module:function``), e.g. just before it merges the shares. Other ranks
run normally. Used to leave the state of an interrupted sharded run behind."""

from __future__ import annotations

import importlib
import os
import sys


def _die(*args, **kwargs):
    os._exit(3)


if __name__ == "__main__":
    if os.environ.get("RANK") == "0":
        module, name = os.environ["DIE_AT"].split(":")
        setattr(importlib.import_module(module), name, _die)
    from agebias.cli import main

    sys.exit(main(sys.argv[1:]))
