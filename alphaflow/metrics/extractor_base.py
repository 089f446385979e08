"""What every feature extractor is (FeatureExtractor), the RGB preparation some share, and the file checks of their
weights. Kept apart from `extractors.py` (which builds them by id) so an extractor module such as `dinov2.py` can
subclass these without importing the module that imports it."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from alphaflow.metrics.errors import MetricsError, WeightsMismatchError


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> str:
    if not path.is_file():
        raise MetricsError(f"{path}: {what} weights not found")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise WeightsMismatchError(f"{path}: sha256 {actual[:16]}... does not match the recorded "
                                   f"{expected[:16]}... for {what}; refusing these weights")
    return actual


def as_uint8_images(images, what: str = "images") -> np.ndarray:
    """Check and convert to a numpy uint8 (N, C, H, W) array; one-line errors for anything else."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise MetricsError(f"{what}: expected uint8 pixels (quantised to the data grid), got dtype {images.dtype}")
    if images.ndim != 4:
        raise MetricsError(f"{what}: expected shape (N, C, H, W), got {images.shape}")
    return images


def as_rgb_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 1 or 3, H, W) -> float (N, 3, H, W) on 0..255: grey images repeated over RGB (ImageNet networks)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class RGBExtractor:
    """Mixin of the ImageNet networks (Inception, DINOv2): they take grey or RGB images."""

    id: str

    def check_images(self, images: np.ndarray) -> None:
        if images.shape[1] not in (1, 3):
            raise MetricsError(f"{self.id}: expects 1 or 3 channels, got {images.shape[1]}")


class FeatureExtractor(ABC):
    """The interface. Subclasses set id, sha256, dim, preprocess and implement _features_batch."""

    id: str
    sha256: str
    dim: int
    preprocess: str           # how images are resized/normalised before the network, recorded with the stats
    batch_size: int = 500     # images per forward pass
    num_classes: int | None = None

    @abstractmethod
    def _features_batch(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, C, H, W) -> features (B, D), under inference mode."""

    def check_images(self, images: np.ndarray) -> None:  # noqa: B027 - a hook: most extractors take any shape
        """Subclasses refuse image shapes their network cannot take."""

    def features(self, images, batch_size: int | None = None) -> np.ndarray:
        images = as_uint8_images(images)
        self.check_images(images)
        bs = max(1, min(batch_size or self.batch_size, self.batch_size))
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(images), bs):
                out[i:i + bs] = self._features_batch(images[i:i + bs]).float().numpy()
        return out

    @property
    def has_classifier(self) -> bool:
        return self.num_classes is not None

    def describe(self) -> str:
        return f"{self.id} ({self.dim}-d, {self.preprocess}, sha256 {self.sha256[:12]})"
