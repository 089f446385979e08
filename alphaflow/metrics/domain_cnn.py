"""A small CNN classifier per data set whose 128-d penultimate layer is the feature space of the small-data FID.

Trained once by scripts/train_domain_cnn.py; the weights are committed with their sha256 and never retrained
inside the metric (docs/method.md#small-data-fid). Architecture: conv stages (3x3 conv, BatchNorm, ReLU; 2x2
max-pool at the end of each stage), flatten, Linear -> 128 -> ReLU (the features), Dropout, Linear -> classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

FEATURE_DIM = 128


@dataclass(frozen=True)
class DomainSpec:
    """What one domain CNN sees: its data set, image shape, and the value grid images are quantised to."""
    extractor_id: str
    dataset_id: str
    image_shape: tuple[int, int, int]
    num_classes: int
    stages: tuple[tuple[int, ...], ...]   # conv widths per stage, a 2x2 max-pool after each stage
    grid_levels: int                      # distinct pixel values of the data: 256 for uint8, 17 for sklearn digits


DOMAINS = {
    "fashion-mnist-cnn": DomainSpec("fashion-mnist-cnn", "fashion-mnist", (1, 28, 28), 10,
                                    stages=((32, 32), (64,), (128,)), grid_levels=256),
    "digits-cnn": DomainSpec("digits-cnn", "digits", (1, 8, 8), 10, stages=((32, 32), (64,)), grid_levels=17),
}


def quantize_to_grid(images: np.ndarray, levels: int) -> np.ndarray:
    """Snap uint8 images to the data's value grid (`levels` values spread over 0..255).

    sklearn digits are 0..16 scaled to 0..255 (rint(v * 255 / 16)); generated digits are snapped to those same 17
    values, so real and generated images pass through the same grid. Real images are unchanged (idempotent).
    """
    if levels == 256:
        return images
    step = 255.0 / (levels - 1)
    return np.rint(np.rint(images.astype(np.float64) / step) * step).clip(0, 255).astype(np.uint8)


class DomainCNN(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, stages, dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        ch, size = in_channels, image_size
        for widths in stages:
            for w in widths:
                layers += [nn.Conv2d(ch, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                ch = w
            layers.append(nn.MaxPool2d(2))
            size //= 2
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(ch * size * size, FEATURE_DIM), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURE_DIM, num_classes))

    @staticmethod
    def for_spec(spec: DomainSpec) -> DomainCNN:
        c, h, w = spec.image_shape
        return DomainCNN(c, h, spec.num_classes, spec.stages)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_input(images_uint8: np.ndarray, spec: DomainSpec) -> torch.Tensor:
    """uint8 (N, C, H, W) on the data grid -> float network input in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(quantize_to_grid(images_uint8, spec.grid_levels)))
    return x.float().div_(127.5).sub_(1.0)


def spec_to_dict(spec: DomainSpec) -> dict:
    return asdict(spec)
