"""User-facing errors.

Anything a user can cause (a missing path, an unknown name, a corrupt or hostile file, an out-of-range option)
raises :class:`UserError`. The CLI prints its message as one line and exits with code 2, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; its message is one self-explanatory line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class BadInputFile(UserError):
    """A single input file that cannot be used (reported in skipped lists by batch commands)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")
