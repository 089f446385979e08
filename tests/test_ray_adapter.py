"""The private Ray entry points afsweep uses (orchestrator/sweep/ray_adapter.py) exist in the pinned Ray: a Ray upgrade
that moves one fails here, by name, instead of silently bringing back the log flood or breaking cluster joins."""

from __future__ import annotations

import importlib
import logging


def test_train_report_logger_is_where_the_adapter_looks():
    from orchestrator.sweep.ray_adapter import quiet_train_report_lines, train_report_logger_name

    name = train_report_logger_name()
    assert name and name.endswith("context.py"), "Ray moved ray.train.v2._internal.execution.context"
    quiet_train_report_lines()
    assert logging.getLogger(name).level == logging.WARNING


def test_token_and_loopback_switches_exist():
    raylet = importlib.import_module("ray._raylet")
    assert callable(getattr(raylet.Config, "initialize", None)), "Ray moved ray._raylet.Config.initialize"
    constants = importlib.import_module("ray._private.ray_constants")
    assert hasattr(constants, "ENABLE_RAY_CLUSTER"), "Ray moved ray._private.ray_constants.ENABLE_RAY_CLUSTER"
