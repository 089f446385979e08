"""Calibration of the small-data FID on Fashion-MNIST at 10k vs 10k: held-out real images score near 0, and known
damage ranks noise and one-class collapse far above blur, blur far above real (docs/method.md#fid-calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from alphaflow.data.sources import load_builtin
from alphaflow.metrics import compute_reference_stats, load_extractor
from alphaflow.metrics.calibration import add_noise, blur, calibration_table, collapse_indices

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fashion():
    try:
        x_train, y_train = load_builtin("fashion-mnist", "train")
        x_test, y_test = load_builtin("fashion-mnist", "test")
    except Exception as e:  # the Debian package dataset-fashion-mnist; scripts/setup.sh installs it
        pytest.fail(f"Fashion-MNIST is needed here: {e}")
    return x_train, y_train, x_test, y_test


def test_fashion_mnist_calibration_at_10k(fashion):
    x_train, y_train, x_test, _ = fashion
    torch.set_num_threads(1)   # on 2 shared cores, 2 threads were 2-5x slower than 1 (measured)
    with threadpool_limits(1):
        ext = load_extractor("fashion-mnist-cnn")
        ref = compute_reference_stats(x_test, ext, "fashion-mnist:test")
        idx = np.random.default_rng(0).permutation(len(x_train))[:10000]
        table = calibration_table(ext, ref, x_train[idx], y_train[idx], with_class_gaussian=False)
    print(table)
    real, blurred = table["real"], table["blur_sigma1"]
    noise, collapsed = table["noise_std50"], table["collapse_one_class"]
    assert ref.n == 10000
    assert real < 1.0
    assert blurred > 50 * real
    assert min(noise, collapsed) > 1.5 * blurred


def test_domain_cnn_classifies_the_test_split(fashion):
    _, _, x_test, y_test = fashion
    torch.set_num_threads(1)
    ext = load_extractor("fashion-mnist-cnn")
    assert ext.meta["test_accuracy"] > 0.92
    assert (ext.predict(x_test[:2000]) == y_test[:2000]).mean() > 0.9


def test_corruptions_do_what_they_say():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 1, 28, 28), dtype=np.uint8)
    assert blur(imgs, 1.0).std() < imgs.std()
    noisy = add_noise(np.full((2, 1, 8, 8), 128, np.uint8), 50.0, rng)
    assert noisy.dtype == np.uint8 and 30 < noisy.astype(float).std() < 70
    labels = np.array([0, 1, 1, 2, 2, 2])
    assert set(labels[collapse_indices(labels, 2, rng)]) == {2}
