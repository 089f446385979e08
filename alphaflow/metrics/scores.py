"""Scores of a set of generated images against reference statistics: FID, class accuracy, precision/recall, KID.

FID is biased upward at small N (docs/method.md#frechet-distance): always report N with it. Precision/recall and
KID compare against the reference's fixed subsample of real features.
"""

from __future__ import annotations

import numpy as np

from alphaflow.metrics.errors import MetricsError
from alphaflow.metrics.extractors import as_uint8_images
from alphaflow.metrics.frechet import frechet_distance, frechet_se, gaussian_stats


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances (len(a), len(b)), float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _kth_radius(feats: np.ndarray, k: int) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (the row itself, at 0, is skipped)."""
    d = _sq_dists(feats, feats)
    return np.partition(d, k, axis=1)[:, k]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): each sample covers a ball reaching its k-th
    nearest neighbour in its own set. Precision: the share of generated samples inside some real ball; recall: the
    share of real samples inside some generated ball."""
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    d = _sq_dists(real, fake)                      # (R, G)
    precision = (d <= _kth_radius(real, k)[:, None]).any(axis=0).mean()
    recall = (d <= _kth_radius(fake, k)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def _poly_kernel_sum(a: np.ndarray, b: np.ndarray, block: int = 1000) -> float:
    """Sum over all pairs of k(a_i, b_j) = (a_i . b_j / d + 1)^3, in row blocks to bound memory."""
    d = a.shape[1]
    b = b.astype(np.float64)
    return float(sum((((a[i:i + block].astype(np.float64) @ b.T) / d + 1.0) ** 3).sum()
                     for i in range(0, len(a), block)))


def _poly_kernel_offdiag_mean(a: np.ndarray) -> float:
    """Mean of k(a_i, a_j) over pairs i != j."""
    a64 = a.astype(np.float64)
    diag = ((((a64 * a64).sum(1)) / a.shape[1] + 1.0) ** 3).sum()
    return (_poly_kernel_sum(a, a) - diag) / (len(a) * (len(a) - 1))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, real_term: float | None = None) -> float:
    """KID (Binkowski et al. 2018): the unbiased estimate of MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3,

        mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j),

    over all pairs. Implementations that average this over random equal-size subsets estimate the same quantity
    with more variance; all pairs is their limit and, with the real-real term cached per reference, cheaper.
    Unbiased, hence usable at small N (slightly negative when the two sets match)."""
    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    if real_term is None:
        real_term = _poly_kernel_offdiag_mean(real)
    cross = _poly_kernel_sum(fake, real) / (len(fake) * len(real))
    return float(_poly_kernel_offdiag_mean(fake) + real_term - 2.0 * cross)


def _features_and_predictions(images: np.ndarray, extractor):
    if hasattr(extractor, "features_and_predictions"):
        return extractor.features_and_predictions(images)
    return extractor.features(images), None


def fid_from_images(images_uint8, extractor, reference) -> float:
    """FID of uint8 images (N, C, H, W) against reference statistics in the extractor's feature space."""
    reference.check_compatible(extractor)
    mu, sigma = gaussian_stats(extractor.features(as_uint8_images(images_uint8)))
    return frechet_distance(mu, sigma, reference.mu, reference.sigma)


def sample_metrics(images_uint8, labels, extractor, reference, k: int = 3) -> dict[str, float]:
    """{"fid", "fid_se", "n", "class_acc", "precision", "recall", "kid"} of generated uint8 images (N, C, H, W).

    fid_se: the FID's standard error over the generated samples (metrics.frechet.frechet_se, a bootstrap).

    labels: the class each image was generated for (None to skip class accuracy). class_acc is the share the
    domain classifier assigns to that class (NaN for extractors without a classifier); precision, recall and KID
    are NaN against a plain pytorch-fid file, which carries no real features.
    """
    images = as_uint8_images(images_uint8, "generated images")
    if len(images) < 2:
        raise MetricsError(f"generated images: need at least 2 for a covariance, got {len(images)}")
    reference.check_compatible(extractor)
    feats, preds = _features_and_predictions(images, extractor)
    mu, sigma = gaussian_stats(feats)
    out = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma),
           "fid_se": frechet_se(feats, reference.mu, reference.sigma, sigma_ref_sqrt=reference.sigma_sqrt()),
           "n": float(len(images))}

    out["class_acc"] = float("nan")
    if labels is not None and preds is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images):
            raise MetricsError(f"labels: {len(labels)} labels for {len(images)} images")
        out["class_acc"] = float((preds == labels).mean())

    out["precision"] = out["recall"] = out["kid"] = float("nan")
    real = reference.real_features
    if real is not None and len(real) > k:
        # equal set sizes: the k-NN balls of precision/recall depend on how many samples each set has
        n_pr = min(len(real), len(feats))
        out["precision"], out["recall"] = precision_recall(real[:n_pr], feats[:n_pr], k=k)
        out["kid"] = kernel_inception_distance(real, feats, real_term=reference.kid_real_term())
    return out
