"""Reference statistics of real images in one feature space, stored once per data set as .npz.

A file holds mu, sigma (float64), n, the extractor's id, sha256 and preprocessing, the data set id, and a fixed
random subsample of the real features (for precision/recall and KID). `ReferenceStats.load` also accepts a plain
pytorch-fid .npz (just mu and sigma); such a file can only be checked by its feature dimension.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alphaflow.metrics.errors import IncompatibleReferenceError, MetricsError
from alphaflow.metrics.extractors import load_extractor
from alphaflow.metrics.frechet import gaussian_stats, sqrt_psd
from alphaflow.metrics.scores import _poly_kernel_offdiag_mean

_TEXT_FIELDS = ("extractor_id", "extractor_sha256", "preprocess", "dataset_id")


@dataclass
class ReferenceStats:
    mu: np.ndarray                      # (D,) float64
    sigma: np.ndarray                   # (D, D) float64
    n: int                              # images behind mu, sigma (0 = unknown, e.g. a plain pytorch-fid file)
    extractor_id: str = ""              # "" = unknown (a plain pytorch-fid file)
    extractor_sha256: str = ""
    preprocess: str = ""
    dataset_id: str = ""
    real_features: np.ndarray | None = None   # (M, D) float32, a fixed random subsample, already shuffled

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def kid_real_term(self) -> float | None:
        """The real-real kernel mean of KID, the same for every evaluation: computed once, then cached."""
        if self.real_features is None or len(self.real_features) < 2:
            return None
        cache = self.__dict__.setdefault("_kid_cache", {})
        if id(self.real_features) not in cache:
            cache.clear()
            cache[id(self.real_features)] = _poly_kernel_offdiag_mean(self.real_features)
        return cache[id(self.real_features)]

    def sigma_sqrt(self) -> np.ndarray:
        """sqrt(sigma), what every bootstrap round of the FID's standard error uses: computed once, then cached."""
        cache = self.__dict__.setdefault("_sqrt_cache", {})
        if id(self.sigma) not in cache:
            cache.clear()
            cache[id(self.sigma)] = sqrt_psd(self.sigma)
        return cache[id(self.sigma)]

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename), so a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n)}
        arrays.update({k: np.array(getattr(self, k)) for k in _TEXT_FIELDS})
        if self.real_features is not None:
            arrays["real_features"] = self.real_features.astype(np.float32)
        fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceStats:
        path = Path(path)
        if not path.is_file():
            raise MetricsError(f"{path}: reference statistics not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as e:  # zip/npy errors come in many types; all mean the same thing here
            raise MetricsError(f"{path}: not a readable .npz of reference statistics ({type(e).__name__})") from None
        if "mu" not in data or "sigma" not in data:
            raise MetricsError(f"{path}: no 'mu' and 'sigma' arrays (found: {', '.join(sorted(data)) or 'none'})")
        mu = np.asarray(data["mu"], np.float64).reshape(-1)
        sigma = np.atleast_2d(np.asarray(data["sigma"], np.float64))
        if sigma.shape != (mu.size, mu.size):
            raise MetricsError(f"{path}: sigma has shape {sigma.shape}, expected ({mu.size}, {mu.size})")
        real = data.get("real_features")
        if real is not None and (real.ndim != 2 or real.shape[1] != mu.size):
            raise MetricsError(f"{path}: real_features has shape {real.shape}, expected (M, {mu.size})")
        text = {k: str(data[k]) if k in data else "" for k in _TEXT_FIELDS}
        n = int(data["n"]) if "n" in data else 0
        return cls(mu=mu, sigma=sigma, n=n, real_features=real, **text)

    def check_compatible(self, extractor, dataset_id: str | None = None, where: str = "reference statistics") -> None:
        """Refuse, in one line, statistics from another feature space or data set."""
        if self.dim != extractor.dim:
            raise IncompatibleReferenceError(f"{where}: {self.dim}-d features, but extractor {extractor.id} gives "
                                             f"{extractor.dim}-d")
        if self.extractor_id:  # plain pytorch-fid files carry no provenance: the dimension is all we can check
            if self.extractor_id != extractor.id:
                raise IncompatibleReferenceError(f"{where}: computed with extractor {self.extractor_id}, "
                                                 f"not {extractor.id}")
            if self.extractor_sha256 and self.extractor_sha256 != extractor.sha256:
                raise IncompatibleReferenceError(
                    f"{where}: computed with {self.extractor_id} weights sha256 {self.extractor_sha256[:12]}, "
                    f"these are {extractor.sha256[:12]} (recompute the statistics)")
            if self.preprocess and self.preprocess != extractor.preprocess:
                raise IncompatibleReferenceError(f"{where}: preprocessing '{self.preprocess}' differs from the "
                                                 f"extractor's '{extractor.preprocess}'")
        # ids may name a split ("fashion-mnist:test" for a model trained on "fashion-mnist:train"): compare sets
        if dataset_id and self.dataset_id and _base(self.dataset_id) != _base(dataset_id):
            raise IncompatibleReferenceError(f"{where}: statistics of data set {self.dataset_id}, not {dataset_id}")


def _base(dataset_id: str) -> str:
    return dataset_id.split(":")[0]


def compute_reference_stats(images_uint8, extractor_id, dataset_id: str, batch_size: int = 500,
                            n_real_features: int = 5000, seed: int = 0) -> ReferenceStats:
    """Statistics of real images (uint8 (N, C, H, W)); extractor_id is an id or a loaded extractor."""
    extractor = load_extractor(extractor_id) if isinstance(extractor_id, str) else extractor_id
    feats = extractor.features(images_uint8, batch_size=batch_size)
    mu, sigma = gaussian_stats(feats)
    keep = np.random.default_rng(seed).permutation(len(feats))[:n_real_features]
    return ReferenceStats(mu=mu, sigma=sigma, n=len(feats), extractor_id=extractor.id,
                          extractor_sha256=extractor.sha256, preprocess=extractor.preprocess,
                          dataset_id=dataset_id, real_features=feats[keep].astype(np.float32))
