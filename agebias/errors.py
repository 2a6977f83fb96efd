"""User-facing errors.

Anything a user can cause raises a subclass of :class:`UserError`; the CLI prints its message as one line and exits
with code 2, without a traceback. The subclasses say what went wrong, so library callers can catch one kind:

- :class:`SettingsError`: a setting out of range, of the wrong type or unknown (names the field);
- :class:`DataError`: a dataset, image, manifest or results file that cannot be used (:class:`BadInputFile` for one
  file, reported in skipped lists by batch commands);
- :class:`ModelError`: a model or checkpoint that cannot be read, is refused (unsafe pickle) or does not fit.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; its message is one self-explanatory line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class SettingsError(UserError, ValueError):
    """A bad setting. ``field`` names the setting (``stage`` its dataclass, e.g. ``finetune``) so that a front end
    can add its own spelling (``--lr``, ``[finetune] lr``)."""

    def __init__(self, message: str, field: str | None = None, stage: str | None = None):
        self.field = field
        self.stage = stage
        self.detail = " ".join(str(message).split())
        prefix = f"{stage} setting '{field}': " if field and stage else f"setting '{field}': " if field else ""
        super().__init__(prefix + self.detail)

    def reworded(self, message: str) -> "SettingsError":
        """The same error (field, stage) with another one-line message, e.g. one that names the flag or file."""
        new = SettingsError(message)
        new.field, new.stage, new.detail = self.field, self.stage, self.detail
        return new


class DataError(UserError):
    """A dataset, image, manifest or results file that cannot be used."""


class BadInputFile(DataError):
    """A single input file that cannot be used (reported in skipped lists by batch commands)."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ModelError(UserError):
    """A model, checkpoint or generator network that cannot be read, is refused, or does not fit."""
