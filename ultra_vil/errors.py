"""Errors the user can fix: a bad file, a bad argument, bad data.

The command-line scripts catch `UserError` and print one line, `error: <file>: <cause>`, with exit status 2
(the traceback only with `--debug`); anything else is a bug in ultra-vil and keeps its traceback. Raise a
`UserError` (or a subclass) where the cause is known and the user can act on it, and name the file (and the line
or index) in it: "error: ckpt.pt: truncated file (0 bytes)" is actionable, "EOFError" is not.
"""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """An error the user can fix; `str()` is the one line the CLI prints after "error: ".

    Args:
        message: the cause, phrased for the user (never empty: an empty reason is what this class exists to avoid).
        path: the file the cause is in, printed first; None when no file is involved (a bad flag value).
        line: 1-based line (or 0-based index, phrased by the caller in `message`) inside `path`, if known.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        message = str(message).strip() or type(self).__name__
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        where = "" if self.path is None else f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


def describe(exc: BaseException) -> str:
    """One line for any exception, never empty: `str(exc)`, else its class name (EOFError() prints as "")."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class ArgumentError(UserError, ValueError):
    """A flag value that does not fit the files or the run (--resume of a weights-only file, a batch size that does
    not divide among the processes). A ValueError too, for callers that caught one before."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite: the run cannot go on; the message says what to change."""
