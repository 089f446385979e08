"""Reference statistics: round trip, plain pytorch-fid files, and refusal of mismatched weights or statistics."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from alphaflow.metrics import (
    IncompatibleReferenceError,
    MetricsError,
    ReferenceStats,
    WeightsMismatchError,
    fid_from_images,
    load_extractor,
    sample_metrics,
)
from alphaflow.metrics.extractors import WEIGHTS_DIR

torch.set_num_threads(1)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_compute_records_provenance(digits):
    ext, ref, _, _ = digits
    assert ref.n == 360 and ref.dim == 128
    assert (ref.extractor_id, ref.dataset_id) == ("digits-cnn", "digits")
    assert ref.extractor_sha256 == ext.sha256 and len(ext.sha256) == 64
    assert ref.preprocess == ext.preprocess
    assert ref.real_features.shape == (360, 128)


def test_save_load_round_trip(digits, tmp_path):
    _, ref, _, _ = digits
    path = ref.save(tmp_path / "sub" / "ref.npz")
    back = ReferenceStats.load(path)
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.sigma, ref.sigma)
    np.testing.assert_array_equal(back.real_features, ref.real_features)
    assert (back.n, back.extractor_id, back.extractor_sha256, back.preprocess, back.dataset_id) == \
        (ref.n, ref.extractor_id, ref.extractor_sha256, ref.preprocess, ref.dataset_id)
    assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]  # no temp file left behind


def test_plain_pytorch_fid_npz_is_accepted(digits, tmp_path):
    ext, ref, x_train, y_train = digits
    np.savez(tmp_path / "plain.npz", mu=ref.mu, sigma=ref.sigma)
    plain = ReferenceStats.load(tmp_path / "plain.npz")
    assert plain.extractor_id == "" and plain.real_features is None
    m = sample_metrics(x_train, y_train, ext, plain)
    assert m["fid"] == pytest.approx(fid_from_images(x_train, ext, ref), rel=1e-9)
    assert np.isnan(m["precision"]) and np.isnan(m["kid"])  # no real features in a plain file
    assert m["class_acc"] > 0.95


def test_plain_npz_of_another_dimension_is_refused(digits, tmp_path):
    ext, _, x_train, y_train = digits
    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(IncompatibleReferenceError, match="2048-d features, but extractor digits-cnn gives 128-d"):
        sample_metrics(x_train, y_train, ext, ReferenceStats.load(tmp_path / "inception.npz"))


def test_statistics_of_another_extractor_are_refused(digits):
    ext, ref, x_train, y_train = digits
    other = ReferenceStats(mu=ref.mu, sigma=ref.sigma, n=ref.n, extractor_id="fashion-mnist-cnn",
                           extractor_sha256="0" * 64, preprocess=ref.preprocess, dataset_id="digits")
    with pytest.raises(IncompatibleReferenceError, match="computed with extractor fashion-mnist-cnn, not digits-cnn"):
        sample_metrics(x_train, y_train, ext, other)


def test_statistics_of_other_weights_are_refused(digits):
    ext, ref, x_train, y_train = digits
    stale = ReferenceStats(mu=ref.mu, sigma=ref.sigma, n=ref.n, extractor_id="digits-cnn",
                           extractor_sha256="ab" * 32, preprocess=ref.preprocess, dataset_id="digits")
    with pytest.raises(IncompatibleReferenceError, match="recompute the statistics"):
        fid_from_images(x_train, ext, stale)


def test_statistics_of_another_data_set_are_refused(digits):
    ext, ref, _, _ = digits
    with pytest.raises(IncompatibleReferenceError, match="statistics of data set digits, not fashion-mnist"):
        ref.check_compatible(ext, dataset_id="fashion-mnist")
    ref.check_compatible(ext, dataset_id="digits")
    ref.check_compatible(ext, dataset_id="digits:train")  # a split of the same data set is the same data set


def test_weights_with_a_wrong_sha256_are_refused(tmp_path):
    pt = tmp_path / "digits-cnn.pt"
    shutil.copy(WEIGHTS_DIR / "digits-cnn.pt", pt)
    shutil.copy(WEIGHTS_DIR / "digits-cnn.sha256", tmp_path / "digits-cnn.sha256")
    assert load_extractor("digits-cnn", pt).sha256 == load_extractor("digits-cnn").sha256
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF   # one flipped byte
    pt.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatchError) as e:
        load_extractor(f"digits-cnn:{pt}")
    assert "does not match" in str(e.value) and str(pt) in str(e.value) and "\n" not in str(e.value)


def test_missing_weights_hash_and_unknown_id_are_one_line_errors(tmp_path):
    shutil.copy(WEIGHTS_DIR / "digits-cnn.pt", tmp_path / "digits-cnn.pt")
    with pytest.raises(MetricsError, match="recorded sha256 for digits-cnn not found"):
        load_extractor("digits-cnn", tmp_path / "digits-cnn.pt")
    with pytest.raises(MetricsError, match="unknown feature extractor 'mnist-cnn'"):
        load_extractor("mnist-cnn")


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(MetricsError, match="reference statistics not found"):
        ReferenceStats.load(tmp_path / "absent.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(MetricsError, match="not a readable .npz"):
        ReferenceStats.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(MetricsError, match="no 'mu' and 'sigma' arrays"):
        ReferenceStats.load(tmp_path / "other.npz")
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(MetricsError, match=r"sigma has shape \(4, 4\), expected \(3, 3\)"):
        ReferenceStats.load(tmp_path / "shape.npz")
