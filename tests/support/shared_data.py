"""Data prepared once per test session and shared by the sweep tests (each sweep reads it through data.manifest)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fashion_manifest(tmp_path_factory) -> str:
    """Fashion-MNIST prepared by `prepare_builtin` (shards, manifest, FID reference statistics)."""
    from alphaflow.data import prepare_builtin

    out = tmp_path_factory.getbasetemp() / "shared-fashion-mnist"
    return prepare_builtin("fashion-mnist", str(out))
