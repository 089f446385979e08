"""The `afsweep` command line: the group in `main`, one module per command (or pair of commands)."""

from orchestrator.cli.main import main

__all__ = ["main"]
