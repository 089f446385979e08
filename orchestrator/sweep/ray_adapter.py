"""The three places where afsweep reaches into Ray 2.60's private modules, kept here and nowhere else (a test,
tests/test_ray_adapter.py, fails loudly if the pinned Ray moves any of them). Each has no public equivalent:

- Ray Train logs every `ray.train.report` at INFO from every rank, metrics dict and all, through a logger named
  after its own file; its public LoggingConfig does not reach that logger.
- A driver joining a token-protected cluster must be in token mode, but Ray reads RAY_AUTH_MODE once at import.
- A one-machine cluster must stay on loopback; Ray reads that switch into a module constant at import.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path


def train_report_logger_name() -> str | None:
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return None
    return context.__file__


def quiet_train_report_lines() -> None:
    """Raise Ray Train's report logger to WARNING (if Ray moved it, its lines simply come back)."""
    name = train_report_logger_name()
    if name:
        logging.getLogger(name).setLevel(logging.WARNING)


def use_token_auth_if_available() -> bool:
    """Ray 2.60 clusters require a token; a connecting driver stays in 'disabled' mode unless told, even when the
    token file is there. Use the token when one is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)."""
    if "RAY_AUTH_MODE" in os.environ:
        return False
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config

    Config.initialize("")  # Ray read its config at import: make it see the mode (as Ray's own setup does)
    return True


def keep_local_cluster_on_loopback() -> None:
    """A one-machine cluster: every Ray address on loopback (Ray otherwise resolves 127.0.0.1 to the machine's
    network address, and a single-node cluster needs no other). The variable is read at import: set the constant."""
    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
