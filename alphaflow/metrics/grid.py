"""A PNG of generated samples: one row per class, upscaled (nearest) so that small images are viewable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from alphaflow.metrics.extractors import as_uint8_images


def make_grid(images_uint8, labels, per_class: int = 10, pad: int = 2, min_cell: int = 64) -> np.ndarray:
    """(H, W, C) uint8 array: row c holds the first `per_class` images generated for class c."""
    images = as_uint8_images(images_uint8, "grid images")
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(f"sample grid: {len(labels)} labels for {len(images)} images")
    n, c, h, w = images.shape
    scale = max(1, -(-min_cell // max(h, w)))        # 28x28 -> x3, 8x8 -> x8
    classes = np.unique(labels)
    cols = min(per_class, max(int((labels == k).sum()) for k in classes)) if n else 0
    ch, cw = h * scale + pad, w * scale + pad
    grid = np.full((pad + len(classes) * ch, pad + cols * cw, c), 255, dtype=np.uint8)
    for row, k in enumerate(classes):
        for col, i in enumerate(np.flatnonzero(labels == k)[:cols]):
            tile = images[i].transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
            y, x = pad + row * ch, pad + col * cw
            grid[y:y + h * scale, x:x + w * scale] = tile
    return grid


def grid_image(images_uint8, labels, per_class: int = 10) -> Image.Image:
    """The grid as a PIL image (grey for one channel)."""
    grid = make_grid(images_uint8, labels, per_class=per_class)
    return Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)


def sample_grid_png(images_uint8, labels, path: str | Path, per_class: int = 10) -> Path:
    img = grid_image(images_uint8, labels, per_class)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
