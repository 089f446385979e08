"""Frechet distance: closed forms, equality with the scipy sqrtm form, and the symmetrisation trap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from alphaflow.metrics import frechet_distance, gaussian_stats
from alphaflow.metrics.frechet import bootstrap_rounds, frechet_se, sqrt_psd, trace_sqrt_product

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _random_psd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def _scipy_fd(mu1, s1, mu2, s2):
    """pytorch-fid's form: tr sqrtm(S1 S2) via scipy."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    a, b = rng.uniform(0.1, 3, size=7), rng.uniform(0.1, 3, size=7)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances_match_the_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.normal(size=6)
    expected = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-8)


def test_one_dimensional_case():
    # FD of N(m1, v1), N(m2, v2) = (m1 - m2)^2 + (sqrt v1 - sqrt v2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


@pytest.mark.parametrize("d,rank,seed", [(3, None, 0), (32, None, 1), (64, 20, 2), (128, None, 3)])
def test_equals_scipy_sqrtm_form_on_random_psd_pairs(d, rank, seed):
    rng = np.random.default_rng(seed)
    s1, s2 = _random_psd(rng, d, rank), _random_psd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ours, theirs = frechet_distance(mu1, s1, mu2, s2), _scipy_fd(mu1, s1, mu2, s2)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)


def test_symmetrising_the_product_would_be_wrong():
    """The trap the implementation avoids: eigh of (S1 S2 + S2 S1)/2 gives other eigenvalues for non-commuting S."""
    rng = np.random.default_rng(4)
    s1, s2 = _random_psd(rng, 10), _random_psd(rng, 10)
    mu = np.zeros(10)
    p = s1 @ s2
    wrong_tr = np.sqrt(np.clip(np.linalg.eigvalsh((p + p.T) / 2), 0, None)).sum()
    wrong = np.trace(s1) + np.trace(s2) - 2 * wrong_tr
    right = frechet_distance(mu, s1, mu, s2)
    assert right == pytest.approx(_scipy_fd(mu, s1, mu, s2), rel=1e-6)
    assert abs(right - wrong) > 1e-3


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(500, 16))
    mu, sigma = gaussian_stats(feats)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_gaussian_stats_are_float64_and_unbiased():
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(50, 4)).astype(np.float32)
    mu, sigma = gaussian_stats(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)


def test_bad_shapes_are_refused_in_one_line():
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _shifted_reference(d: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of a Gaussian unlike N(0, I): shifted mean, correlated covariance."""
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(scale=0.5, size=d), a @ a.T + 0.5 * np.eye(d)


def test_symmetric_trace_form_of_the_bootstrap_equals_the_fid():
    """tr sqrt(R S R), R = sqrt(sigma_ref), the form each bootstrap round uses, is tr sqrt(S sigma_ref)."""
    rng = np.random.default_rng(3)
    mu_ref, sigma_ref = _shifted_reference(12, rng)
    mu, sigma = gaussian_stats(rng.normal(size=(300, 12)))
    root = sqrt_psd(sigma_ref)
    assert np.allclose(root @ root, sigma_ref, atol=1e-10)
    symmetric = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma @ root), 0, None)).sum()
    assert symmetric == pytest.approx(trace_sqrt_product(sigma, sigma_ref), rel=1e-10)


def test_bootstrap_standard_error_matches_the_spread_over_independent_samples():
    """The SE from one sample's resamples against the real spread of the FID over 300 independent samples of the
    same size (reference fixed): within 25% on average over 20 samples (each bootstrap SE, 30 rounds, is itself
    noisy by about 13%)."""
    rng = np.random.default_rng(0)
    d, n = 16, 400
    mu_ref, sigma_ref = _shifted_reference(d, rng)
    fids = [frechet_distance(*gaussian_stats(rng.normal(size=(n, d))), mu_ref, sigma_ref) for _ in range(300)]
    true_sd = float(np.std(fids, ddof=1))
    ses = [frechet_se(rng.normal(size=(n, d)), mu_ref, sigma_ref, seed=i) for i in range(20)]
    assert 0.75 < np.mean(ses) / true_sd < 1.25, (np.mean(ses), true_sd)
    # deterministic for a seed; a different seed draws other resamples
    x = rng.normal(size=(n, d))
    assert frechet_se(x, mu_ref, sigma_ref, seed=1) == frechet_se(x, mu_ref, sigma_ref, seed=1)
    assert frechet_se(x, mu_ref, sigma_ref, seed=1) != frechet_se(x, mu_ref, sigma_ref, seed=2)
    assert bootstrap_rounds(128) == 30 and bootstrap_rounds(2048) == 10
