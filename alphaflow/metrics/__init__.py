"""Evaluation: Frechet distance, feature extractors, reference statistics, sample scores and grids."""

from alphaflow.metrics.errors import IncompatibleReferenceError, MetricsError, WeightsMismatchError
from alphaflow.metrics.extractors import FeatureExtractor, file_sha256, load_extractor
from alphaflow.metrics.frechet import frechet_distance, gaussian_stats
from alphaflow.metrics.grid import sample_grid_png
from alphaflow.metrics.reference import ReferenceStats, compute_reference_stats
from alphaflow.metrics.scores import fid_from_images, kernel_inception_distance, precision_recall, sample_metrics

__all__ = [
    "FeatureExtractor", "IncompatibleReferenceError", "MetricsError", "ReferenceStats", "WeightsMismatchError",
    "compute_reference_stats", "fid_from_images", "file_sha256", "frechet_distance", "gaussian_stats",
    "kernel_inception_distance", "load_extractor", "precision_recall", "sample_grid_png", "sample_metrics",
]
