"""Problems found in a data set, each tied to the file (and line) a user has to open to fix it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from ultra_vil.errors import UserError

# A line number, or a function that finds it (for sources where that is slow and only worth it on error).
Line = Union[int, None, Callable[[], Union[int, None]]]


def resolve_line(line: Line) -> int | None:
    return line() if callable(line) else line


@dataclass(frozen=True)
class Issue:
    """One problem. `line` is 1-based, or None where a line means nothing (an image file, a directory)."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else f"{self.path}"
        return f"{where}: {self.message}"


@dataclass
class Issues:
    """Errors (the data cannot be used as it is) and warnings (it can, but look at it)."""

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def error(self, path: Path | str, line: Line, message: str) -> None:
        self.errors.append(Issue(Path(path), resolve_line(line), message))

    def warn(self, path: Path | str, line: Line, message: str) -> None:
        self.warnings.append(Issue(Path(path), resolve_line(line), message))

    def format(self, max_each: int | None = 50) -> str:
        """Errors, then warnings, at most `max_each` of each (None: all), with a count of those left out."""
        out = []
        for title, items in (("error", self.errors), ("warning", self.warnings)):
            if not items:
                continue
            out.append(f"{len(items)} {title}{'s' if len(items) > 1 else ''}:")
            shown = items if max_each is None else items[:max_each]
            out += [f"  {title}: {issue}" for issue in shown]
            if len(items) > len(shown):
                out.append(f"  ... and {len(items) - len(shown)} more {title}s")
        return "\n".join(out)


class DatasetError(UserError, ValueError):
    """Invalid data. The message lists every problem found (file:line: what is wrong).

    A `UserError` (the user fixes the data; scripts/convert_dataset.py exits with status 1 for it) and, as before,
    a ValueError."""

    def __init__(self, summary: str, issues: Issues | None = None, max_each: int | None = 50):
        self.issues = issues or Issues()
        details = self.issues.format(max_each)
        UserError.__init__(self, f"{summary}\n{details}" if details else summary)
