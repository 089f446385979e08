"""Random image arrays prepared as a data set, and the keys each rank reads: what the data path's tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alphaflow.data import make_train_loader

N = 960           # = 2 ranks x 2 workers x 16 batch x 15 batches: an exact epoch covers every sample
SHAPE = (2, 6, 6)


def make_arrays(path: Path, n: int = N, shape=SHAPE, classes: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    images[:, 1] //= 2  # give the channels different statistics
    labels = rng.integers(0, classes, n)
    np.savez(path, images=images, labels=labels, class_names=np.array([f"c{i}" for i in range(classes)]))
    return images, labels


def epoch_keys(url, mode="exact", world=2, workers=2, batch=16, batches=None, seed=0):
    """Keys per rank over `batches` batches (default: one epoch), and the batch counts."""
    out = {}
    for rank in range(world):
        loader = make_train_loader(url, batch_size=batch, rank=rank, world_size=world, seed=seed, mode=mode,
                                   num_workers=workers)
        n = batches or loader.batches_per_epoch
        it = iter(loader)
        keys = []
        for _ in range(n):
            x, y = next(it)
            assert x.shape == (batch, *SHAPE) and x.dtype == torch.float32 and y.dtype == torch.int64
            keys.append(list(loader.last_keys))
        out[rank] = keys
    return out
