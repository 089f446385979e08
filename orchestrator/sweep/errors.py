"""The sweep's own failures, each one line that says what and where."""

from __future__ import annotations

from alphaflow.errors import ExpectedError, InputError


class SweepError(RuntimeError, ExpectedError):
    """The sweep cannot start or finish; one line that says what and where."""


class SweepInputError(SweepError, InputError):
    """The sweep's input is bad (a missing or truncated shard): exit code 2, before any trial starts."""
