"""Shared pytest fixtures, each in its own module: the SeaweedFS S3 server (tests/support/s3_fixtures.py) and data
prepared once per session (tests/support/shared_data.py), and the digits reference statistics of the metrics tests
(tests/support/metrics_fixtures.py)."""

import os

import pytest
import torch

pytest_plugins = ["tests.support.s3_fixtures", "tests.support.shared_data", "tests.support.metrics_fixtures"]

torch.set_num_threads(2)  # the test machine has 2 cores; keep each test's torch from oversubscribing them


@pytest.fixture(autouse=True)
def _keep_mlflow_uri():
    """mlflow.set_tracking_uri() in a test sets MLFLOW_TRACKING_URI for the whole process, which every later CLI
    subprocess would inherit (a dead test server, another test's store): restore it after each test."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(autouse=True)
def _no_ray_left_connected():
    """A test that connects this process to Ray (an in-process launch, sample-sweep --ray local) must not leave it
    connected: a later `ray stop --force` would kill that cluster's raylet, and a Ray driver whose raylet dies exits
    the whole process (pytest with it, before its summary: CI saw only dots and exit code 1)."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
