"""sample_metrics and its parts: class accuracy, precision/recall, KID, input checks, the sample grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from alphaflow.data.sources import load_builtin
from alphaflow.metrics import MetricsError, kernel_inception_distance, precision_recall, sample_grid_png, sample_metrics
from alphaflow.metrics.domain_cnn import quantize_to_grid

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_sample_metrics_keys_and_real_versus_noise(digits):
    ext, ref, x, y = digits
    real = sample_metrics(x, y, ext, ref)
    assert set(real) == {"fid", "fid_se", "n", "class_acc", "precision", "recall", "kid"}
    assert 0 < real["fid_se"] < real["fid"]
    assert real["n"] == len(x)
    assert real["class_acc"] > 0.97 and real["precision"] > 0.8 and real["recall"] > 0.7
    noise = np.random.default_rng(0).integers(0, 256, size=x.shape, dtype=np.uint8)
    bad = sample_metrics(noise, y, ext, ref)
    assert bad["fid"] > 20 * real["fid"]
    assert bad["class_acc"] < 0.3 and bad["recall"] < 0.1 and bad["kid"] > 20 * abs(real["kid"])


def test_wrong_labels_lower_class_accuracy_only(digits):
    ext, ref, x, y = digits
    right, wrong = sample_metrics(x, y, ext, ref), sample_metrics(x, (y + 1) % 10, ext, ref)
    assert wrong["class_acc"] < 0.05 and wrong["fid"] == right["fid"]


def test_digits_are_snapped_to_their_17_level_grid(digits):
    ext, _, x, _ = digits
    np.testing.assert_array_equal(quantize_to_grid(x, 17), x)  # real digits are already on the grid
    assert set(np.unique(x)) <= set(np.rint(np.arange(17) * 255 / 16).astype(int))
    shifted = np.clip(x.astype(int) + 3, 0, 255).astype(np.uint8)  # off-grid by less than half a level
    np.testing.assert_array_equal(ext.features(shifted), ext.features(x))


def test_precision_recall_of_gaussians():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 8))
    same = rng.normal(size=(1000, 8))
    p, r = precision_recall(real, same, k=3)
    assert p > 0.7 and r > 0.7
    narrow = rng.normal(size=(1000, 8)) * 0.3           # mode dropping: precise, poor recall
    p, r = precision_recall(real, narrow, k=3)
    assert p > 0.95 and r < 0.4
    far = rng.normal(size=(1000, 8)) + 6.0             # nothing in common
    assert precision_recall(real, far, k=3) == (0.0, 0.0)


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(9, 3)) + 0.5   # unequal sizes: a U-statistic per term

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(9)) / (6 * 9)
    assert kernel_inception_distance(y, x) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    # the cached real-real term gives the same number
    from alphaflow.metrics.scores import _poly_kernel_offdiag_mean
    assert kernel_inception_distance(y, x, real_term=_poly_kernel_offdiag_mean(y)) == pytest.approx(xx + yy - 2 * xy)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(2000, 16))
    same = kernel_inception_distance(real, rng.normal(size=(500, 16)))
    shifted = kernel_inception_distance(real, rng.normal(size=(500, 16)) + 0.5)
    assert abs(same) < 0.02 and shifted > 0.2


def test_kid_real_term_is_cached_on_the_reference(digits):
    ext, ref, x, y = digits
    first = ref.kid_real_term()
    assert ref.kid_real_term() == first and ref.__dict__["_kid_cache"]
    m = sample_metrics(x, y, ext, ref)
    assert m["kid"] == pytest.approx(kernel_inception_distance(ref.real_features, ext.features(x)), rel=1e-9)


def test_bad_inputs_are_one_line_errors(digits):
    ext, ref, x, y = digits
    with pytest.raises(MetricsError, match="expected uint8 pixels"):
        sample_metrics(x.astype(np.float32), y, ext, ref)
    with pytest.raises(MetricsError, match=r"digits-cnn: expects images of shape \(1, 8, 8\), got \(1, 28, 28\)"):
        sample_metrics(np.zeros((4, 1, 28, 28), np.uint8), y[:4], ext, ref)
    with pytest.raises(MetricsError, match="3 labels for 10 images"):
        sample_metrics(x[:10], y[:3], ext, ref)
    with pytest.raises(MetricsError, match="need at least 2"):
        sample_metrics(x[:1], y[:1], ext, ref)


def test_sample_grid_has_one_row_per_class(tmp_path):
    x, y = load_builtin("digits", "test")
    path = sample_grid_png(x[:120], y[:120], tmp_path / "grid.png", per_class=5)
    img = np.asarray(Image.open(path))
    scale, pad = 8, 2                         # 8x8 digits are shown at 64x64
    assert img.shape == (pad + 10 * (64 + pad), pad + 5 * (64 + pad))
    first_of_class_3 = x[:120][y[:120] == 3][0, 0]
    row = pad + 3 * (64 + pad)
    np.testing.assert_array_equal(img[row:row + 64, pad:pad + 64],
                                  first_of_class_3.repeat(scale, 0).repeat(scale, 1))


def test_sample_grid_of_fashion_sized_images_is_upscaled(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(20, 1, 28, 28), dtype=np.uint8)
    img = Image.open(sample_grid_png(imgs, np.arange(20) % 10, tmp_path / "g.png"))
    assert img.size == (2 + 2 * (84 + 2), 2 + 10 * (84 + 2))   # 28x28 -> 84x84 tiles, 2 per class here
