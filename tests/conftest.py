"""Fixtures shared across test modules live in their own files; this file only makes them visible to pytest."""

import torch

from tests.shared_data import fashion_manifest  # noqa: F401

torch.set_num_threads(2)  # the test machine has 2 cores; keep each test's torch from oversubscribing them
