"""The command line as the user typed it: the CLI records it, provenance tags every run with it."""

from __future__ import annotations

import sys

import click

ARGV_META = "afsweep.argv"   # where the CLI keeps its arguments as typed (click's context meta)


def command_line() -> list[str]:
    """`afsweep ...` as typed when the CLI runs (in this process or not), else this process's argv."""
    ctx = click.get_current_context(silent=True)
    typed = ctx.find_root().meta.get(ARGV_META) if ctx is not None else None
    return ["afsweep", *typed] if typed is not None else list(sys.argv)
