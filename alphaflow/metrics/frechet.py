"""Frechet distance between two Gaussians fitted to features (the FID formula).

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

tr((S1 S2)^(1/2)) is the sum of the square roots of the eigenvalues of S1 S2. S1 S2 is not symmetric, but it is
similar to S1^(1/2) S2 S1^(1/2) (symmetric PSD), so its eigenvalues are real and >= 0 up to rounding: we take the
general eigenvalues (np.linalg.eigvals), keep real parts and clip tiny negatives. Symmetrising S1 S2 first and using
eigh would change the eigenvalues and give a wrong answer. This equals pytorch-fid's scipy.linalg.sqrtm form and
is several times faster (docs/method.md#frechet-distance). All statistics are float64: float32 covariances lose
digits at FID < 1.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"gaussian_stats: features must be (N, D), got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: need at least 2 feature rows for a covariance, got {f.shape[0]}")
    mu = f.mean(axis=0)
    sigma = np.cov(f, rowvar=False)
    return mu, np.atleast_2d(sigma)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1 S2), for PSD S1, S2."""
    eig = np.linalg.eigvals(sigma1 @ sigma2)
    return float(np.sqrt(np.clip(eig.real, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); float64 throughout."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    # rounding can leave a tiny negative value for identical inputs; the distance itself is >= 0
    return max(fd, 0.0)


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a PSD matrix (negative rounding eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def bootstrap_rounds(dim: int) -> int:
    """Bootstrap resamples for the FID's standard error: 30 (a relative error of the SE of about 13%) where a
    feature space is small (domain CNNs, 128); 10 (about 24%) for Inception's 2048, where each costs an eigh of
    2048 x 2048 (seconds on a CPU)."""
    return 30 if dim <= 512 else 10


def frechet_se(features, mu_ref, sigma_ref, rounds: int | None = None, seed: int = 0,
               sigma_ref_sqrt: np.ndarray | None = None) -> float:
    """The standard error of the FID of `features` against fixed reference statistics, over the generated samples:
    the standard deviation of the FID over bootstrap resamples of the feature rows (drawn with replacement).

    The reference side is fixed (its statistics come from a large set, the same for every evaluation), so this is
    the noise a re-evaluation with new samples would show. The bootstrap FIDs themselves sit above the sample's FID
    (duplicated rows add noise to the covariance); only their spread is used. Each resample's trace term is taken
    in the symmetric form tr sqrt(R S R), R = sqrt(sigma_ref) (the same eigenvalues as S sigma_ref), with eigh.
    Deterministic for a given seed. tests/metrics check it against the spread over independent samples."""
    f = np.asarray(features, dtype=np.float64)
    n, dim = f.shape
    rounds = rounds or bootstrap_rounds(dim)
    mu_ref = np.asarray(mu_ref, np.float64)
    root = sqrt_psd(sigma_ref) if sigma_ref_sqrt is None else sigma_ref_sqrt
    trace_ref = float(np.trace(sigma_ref))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        sample = f[rng.integers(0, n, n)]
        mu = sample.mean(axis=0)
        sigma = np.cov(sample, rowvar=False)
        eig = np.linalg.eigvalsh(root @ sigma @ root)
        diff = mu - mu_ref
        values.append(diff @ diff + np.trace(sigma) + trace_ref - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum())
    return float(np.std(values, ddof=1))
