"""Metrics data shared by the metrics tests: the digits CNN with the test split's reference statistics."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits():
    """(extractor, reference statistics of the digits test split, train images, train labels), computed once."""
    from alphaflow.data.sources import load_builtin
    from alphaflow.metrics import compute_reference_stats, load_extractor

    x_test, _ = load_builtin("digits", "test")
    x_train, y_train = load_builtin("digits", "train")
    ext = load_extractor("digits-cnn")
    return ext, compute_reference_stats(x_test, ext, "digits"), x_train, y_train


@pytest.fixture(scope="module")
def one_blas_thread():
    """BLAS threads oversubscribe the 2 shared cores (10-100x slower eig/matmul): one thread while a module runs.
    Modules use it with `pytestmark = pytest.mark.usefixtures("one_blas_thread")`."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield
