"""Shared pytest fixtures, each in its own module: the SeaweedFS S3 server (tests/s3_fixtures.py) and data
prepared once per session (tests/shared_data.py)."""

import torch

pytest_plugins = ["tests.s3_fixtures", "tests.shared_data"]

torch.set_num_threads(2)  # the test machine has 2 cores; keep each test's torch from oversubscribing them
