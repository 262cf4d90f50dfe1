"""User-facing errors: one line naming the file, line and field, and what would fix it.

Every command catches `UserError` at the top and exits with status 2; nothing a user can get wrong
should reach them as a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input. `str(err)` is the whole message shown to the user."""

    exit_code = 2


class SpecError(UserError):
    def __init__(self, message: str, file: str | None = None, line: int | None = None, field: str | None = None):
        self.file, self.line, self.field, self.message = file, line, field, message
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        what = f"{field}: " if field else ""
        super().__init__(one_line(f"{where}{what}{message}"))


class BackendFailure(RuntimeError):
    """A bench backend's failure whose message is already the line the table shows, type name included
    (the genai worker's `RuntimeError: ...`, or a failure recorded for an earlier shape): reported as it
    is, not prefixed with `BackendFailure: ` or `RuntimeError: ` once more at each layer."""


def one_line(text: str) -> str:
    """Escape what would break a one-line message: newlines, other line separators (str.splitlines
    also splits on \x1c-\x1e, \x85, \u2028) and control characters quoted from user input."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
