"""One-line error messages: every expected failure in afsweep is one line that names what and where."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), at most `limit`."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]


class ExpectedError(Exception):
    """Marks a failure the command line reports as one line (exit 1) rather than a traceback: the data, a server, a
    sweep that cannot go on. A bug is anything else, and keeps its traceback."""


class InputError(ExpectedError):
    """Marks an error as the user's input (an argument, a path, a name that does not exist): the CLI exits 2 for
    these, 1 for the rest. Error types inherit it beside their own (e.g. `class X(DataError, InputError)`)."""
