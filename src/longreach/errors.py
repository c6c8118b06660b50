"""Errors that name where bad input came from (file, line, field)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a file, line and field that can be fixed.

    The message reads `FILE:LINE: field 'F': what is wrong`, so an editor can jump to it.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"field '{field}': " if field is not None else ""
        super().__init__(f"{where}{what}{message}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunStopped(RuntimeError):
    """A training run ended early on request (STOP file, SIGTERM); its last step is saved and resumable."""
