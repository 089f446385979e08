"""Score a generator during training: the same labels, noise and N for 1 and 2 NFE, decoded to pixels.

Used by the Ray Train worker at each evaluation and by `afsweep eval`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from alphaflow.data import get_codec
from alphaflow.metrics import sample_metrics

# sample_fn(noise, labels, nfe) -> latents in the normalised space
SampleFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
# decode_fn(normalised latents) -> uint8 images (N, C, H, W)
DecodeFn = Callable[[torch.Tensor], np.ndarray]


class LatentDecoder:
    """Normalised latents -> uint8 images: undo the data set's per-channel normalisation, then its codec."""

    def __init__(self, codec: str, mean, std):
        self.codec = get_codec(codec)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    @classmethod
    def of(cls, manifest) -> LatentDecoder:
        return cls(manifest.codec, manifest.mean, manifest.std)

    def __call__(self, z: torch.Tensor) -> np.ndarray:
        return self.codec.decode(z * self.std + self.mean)


@dataclass
class EvalResult:
    metrics: dict[str, float]          # fid1, fid2, fid2_<sampler>, class_acc1, ...
    images: dict[int, np.ndarray]      # nfe -> uint8 images, for the sample grid
    labels: np.ndarray


def eval_inputs(n: int, image_shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced labels and fixed noise: every evaluation of every trial sees the same inputs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    noise = torch.randn((n, *image_shape), generator=g)
    return noise, labels


def score_sampler(sample_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], decode_fn: DecodeFn,
                  image_shape: tuple[int, ...], num_classes: int, extractor, reference, n: int, seed: int = 1234,
                  batch_size: int = 500) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """One sampler (noise, labels) -> latents, scored on the fixed evaluation inputs: (metrics, images, labels)."""
    noise, labels = eval_inputs(n, image_shape, num_classes, seed)
    chunks = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            chunks.append(decode_fn(sample_fn(noise[i:i + batch_size], labels[i:i + batch_size])))
    imgs = np.concatenate(chunks)
    m = sample_metrics(imgs, labels.numpy(), extractor, reference)
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}, imgs, labels.numpy()


def evaluate_generator(sample_fn: SampleFn, decode_fn: DecodeFn, image_shape: tuple[int, ...], num_classes: int,
                       extractor, reference, n: int, seed: int = 1234, two_nfe_name: str = "ode",
                       batch_size: int = 500) -> EvalResult:
    metrics: dict[str, float] = {}
    images: dict[int, np.ndarray] = {}
    labels = None
    for nfe in (1, 2):
        m, images[nfe], labels = score_sampler(lambda z, y, nfe=nfe: sample_fn(z, y, nfe), decode_fn, image_shape,
                                               num_classes, extractor, reference, n, seed, batch_size)
        metrics[f"fid{nfe}"], metrics[f"fid{nfe}_se"] = m["fid"], m["fid_se"]
        if nfe == 2:
            metrics[f"fid2_{two_nfe_name}"] = m["fid"]
        for k, v in m.items():
            if k not in ("fid", "fid_se", "n"):
                metrics[f"{k}{nfe}"] = v
    metrics["eval_n"] = float(n)
    return EvalResult(metrics=metrics, images=images, labels=labels)
