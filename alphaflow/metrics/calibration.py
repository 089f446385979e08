"""Calibration of a feature space: FID of held-out real images and of known corruptions of them.

A usable FID must put held-out real images near 0 and rank damage sensibly: noise and one-class collapse far
above blur, blur far above real. docs/method.md#fid-calibration has the numbers of a reference CNN on Fashion-MNIST
at 10k vs 10k (real 0.18, per-class Gaussian 59, blur 75, collapse 422, noise 450).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from alphaflow.metrics.frechet import frechet_distance, gaussian_stats


def add_noise(images: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(images + rng.normal(0, std, images.shape), 0, 255).round().astype(np.uint8)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(gaussian_filter(images.astype(np.float64), sigma=(0, 0, sigma, sigma)), 0, 255).round().astype(
        np.uint8)


def collapse_indices(labels: np.ndarray, cls: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of as many images as given, all drawn (with repetition) from one class: mode collapse."""
    return rng.choice(np.flatnonzero(labels == cls), len(labels), replace=True)


def class_gaussian(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image replaced by a draw from a Gaussian fitted to its class's pixels: right first and second moments
    per class, no structure beyond them."""
    out = np.empty_like(images)
    flat = images.reshape(len(images), -1).astype(np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mu, cov = flat[idx].mean(0), np.cov(flat[idx], rowvar=False)
        draw = rng.multivariate_normal(mu, cov, size=len(idx), method="eigh")
        out[idx] = np.clip(draw, 0, 255).round().astype(np.uint8).reshape((len(idx), *images.shape[1:]))
    return out


def class_gaussian_sample(images: np.ndarray, labels: np.ndarray, per_class: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` draws for each class from a Gaussian fitted to all of that class's pixels (the per-class Gaussian
    baseline at a chosen N): (uint8 images, labels)."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    out, out_labels = [], []
    for c in np.unique(labels):
        rows = flat[labels == c]
        draw = rng.multivariate_normal(rows.mean(0), np.cov(rows, rowvar=False), size=per_class, method="eigh")
        out.append(np.clip(draw, 0, 255).round().astype(np.uint8).reshape((per_class, *images.shape[1:])))
        out_labels.append(np.full(per_class, c, dtype=labels.dtype))
    return np.concatenate(out), np.concatenate(out_labels)


def calibration_table(extractor, reference, images: np.ndarray, labels: np.ndarray, seed: int = 0,
                      noise_std: float = 50.0, blur_sigma: float = 1.0, with_class_gaussian: bool = True,
                      batch_size: int = 500) -> dict[str, float]:
    """FID against `reference` of held-out real `images` and of corruptions of them, by name."""
    rng = np.random.default_rng(seed)
    real = extractor.features(images, batch_size=batch_size)

    def fid(feats: np.ndarray) -> float:
        mu, sigma = gaussian_stats(feats)
        return frechet_distance(mu, sigma, reference.mu, reference.sigma)

    out = {"real": fid(real)}
    if with_class_gaussian:
        out["class_gaussian"] = fid(extractor.features(class_gaussian(images, labels, rng), batch_size=batch_size))
    out[f"blur_sigma{blur_sigma:g}"] = fid(extractor.features(blur(images, blur_sigma), batch_size=batch_size))
    # collapsed images are real images repeated: their features are rows of the real ones
    out["collapse_one_class"] = fid(real[collapse_indices(labels, int(labels[0]), rng)])
    out[f"noise_std{noise_std:g}"] = fid(extractor.features(add_noise(images, noise_std, rng), batch_size=batch_size))
    return out
