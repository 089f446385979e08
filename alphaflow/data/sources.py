"""Built-in image data sets that exist offline, as uint8 arrays (N, C, H, W) and int64 labels."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from alphaflow.data.errors import DataError

FASHION_MNIST_DIR = Path(os.environ.get("AFSWEEP_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

BUILTIN_DATASETS = ("fashion-mnist", "digits")

FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)


class DataSourceError(DataError):
    """A data source is missing or unreadable; the message names the path."""


def _read_idx(path: Path) -> np.ndarray:
    """Read one idx file (the MNIST format: big-endian header of dims, then uint8 data), gzipped or not."""
    if not path.exists():
        raise DataSourceError(
            f"{path}: not found (install the Debian package dataset-fashion-mnist, "
            f"or set AFSWEEP_FASHION_MNIST_DIR)"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataSourceError(f"{path}: not an idx file of uint8")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataSourceError(f"{path}: truncated ({data.size} of {int(np.prod(dims))} values)")
    return data.reshape(dims)


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST: train 60,000 / test 10,000 images, (N, 1, 28, 28) uint8, labels 0..9."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataSourceError(f"fashion-mnist: unknown split {split!r} (train or test)")
    images = _read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    return images[:, None, :, :].copy(), labels.astype(np.int64)


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """sklearn-free copy of the UCI digits is not shipped here; we read them from scikit-learn if installed.

    The 1,797 8x8 images (values 0..16) are scaled to 0..255; a fixed 80/20 split (seeded) gives train/test.
    """
    try:  # here, not at the top: scikit-learn takes ~4 s to import and only this source needs it
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataSourceError("digits: scikit-learn is not installed (pip install scikit-learn)") from e
    d = _sk_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(labels))
    idx = {"train": order[:cut], "test": order[cut:]}.get(split)
    if idx is None:
        raise DataSourceError(f"digits: unknown split {split!r} (train or test)")
    return images[idx], labels[idx]


def load_builtin(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """One built-in data set by name: (images uint8 (N, C, H, W), labels int64 (N,))."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split)
    if name == "digits":
        return load_digits(split)
    raise DataSourceError(f"unknown built-in data set {name!r} (known: {', '.join(BUILTIN_DATASETS)})")


def num_classes(name: str) -> int:
    return 10
