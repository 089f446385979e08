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
