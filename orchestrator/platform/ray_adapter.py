"""The four places where afsweep reaches into Ray 2.60's private modules, kept here and nowhere else (a test,
tests/platform/test_ray_adapter.py, fails loudly if the pinned Ray moves any of them). Each has no public equivalent:

- Ray Train logs every `ray.train.report` at INFO from every rank, metrics dict and all, through a logger named
  after its own file; its public LoggingConfig does not reach that logger.
- A driver joining a token-protected cluster must be in token mode, but Ray reads RAY_AUTH_MODE once at import.
- A one-machine cluster must stay on loopback; Ray reads that switch into a module constant at import.
- Ray Train starts a Ray Data `DatasetManager` actor for every worker group, with or without datasets; a trial
  passes none (it reads its own WebDataset shards), so `trainer_class()` leaves that callback out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ray._private import ray_constants
from ray._raylet import Config
from ray.train.torch import TorchTrainer


def train_report_logger_name() -> str | None:
    try:  # a private module (this file's docstring): a Ray that moved it only brings its log lines back
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
    token file is there. Use the token when one is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token)."""
    if "RAY_AUTH_MODE" in os.environ:
        return False
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"

    Config.initialize("")  # Ray read its config at import: make it see the mode (as Ray's own setup does)
    return True


def keep_local_cluster_on_loopback() -> None:
    """A one-machine cluster: every Ray address on loopback (Ray otherwise resolves 127.0.0.1 to the machine's
    network address, and a single-node cluster needs no other). The variable is read at import: set the constant."""
    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


# "0": Ray Train's per-trial helper actors exactly as Ray starts them (the A/B of benchmarks/sweep_overhead.py)
LEAN_TRAIN_ENV = "AFSWEEP_LEAN_TRAIN"
# Ray Train's preemption watcher: one more actor process per worker group, polling the cluster's drain state every
# 5 s for `ray.train.get_preemption_info()`, which a trial never calls (a lost node is handled by FailureConfig)
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def lean_train() -> bool:
    return os.environ.get(LEAN_TRAIN_ENV, "1") != "0"


def skip_unused_train_actors() -> None:
    """Before Ray starts (its processes inherit the driver's environment on a local cluster): no preemption
    watcher per worker group unless the user asked for one. On a cluster started elsewhere, set it there."""
    if lean_train():
        os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")


def datasets_callback_class():
    """Ray Train's DatasetsCallback (the one that starts the DatasetManager actor), or None if Ray moved it."""
    try:  # a private module (this file's docstring): a Ray that moved it starts the actor again
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:
        return None
    return DatasetsCallback


def trainer_class():
    """TorchTrainer, without Ray Data's per-worker-group DatasetManager actor when the trainer has no datasets
    (every afsweep trial): one process less per trial start and per restart, each importing Ray Data."""
    callback = datasets_callback_class()
    if not lean_train() or callback is None:
        return TorchTrainer

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, callback)]

    return LeanTorchTrainer
