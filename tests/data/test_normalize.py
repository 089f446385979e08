"""Normalising on the trainer's device: the loader's batches are its raw (stored-dtype) batches normalised, and a
stored posterior is sampled reproducibly by stream position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alphaflow.data import make_train_loader, prepare_arrays, read_manifest
from alphaflow.data.normalize import LatentNormalizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def latent_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("latents")
    rng = np.random.default_rng(0)
    lat = (rng.standard_normal((640, 3, 4, 4)) * [[[2.0]], [[0.5]], [[1.0]]] + [[[1.0]], [[-3.0]], [[0.0]]])
    np.savez(d / "src.npz", latents=lat.astype(np.float32), labels=rng.integers(0, 4, 640))
    return prepare_arrays(str(d / "src.npz"), str(d / "out"), shard_size_mb=0.01, seed=1)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_are_its_raw_batches_normalised(latent_set, workers):
    m = read_manifest(latent_set)
    kw = dict(batch_size=16, rank=1, world_size=2, seed=5, mode="exact", num_workers=workers)
    normalised, raw = make_train_loader(latent_set, **kw), make_train_loader(latent_set, **kw)
    mean = torch.tensor(m.mean).view(1, -1, 1, 1)
    std = torch.tensor(m.std).view(1, -1, 1, 1)
    kept = []
    for (x, y), (r, ry) in zip(iter(normalised), raw.raw_batches()):
        assert r.dtype == torch.float16 and r.shape == (16, *m.stored_shape)
        assert x.dtype == torch.float32 and x.shape == (16, *m.image_shape)
        assert normalised.last_keys == raw.last_keys
        torch.testing.assert_close(x, (r.float() - mean) / std, rtol=1e-5, atol=1e-5)
        assert torch.equal(y, ry)
        kept.append((x, x.clone(), r, r.clone()))   # the trainer keeps them: reused buffers must not be touched
        if len(kept) == 12:
            break
    assert normalised.position() == raw.position()
    for x, x0, r, r0 in kept:
        assert torch.equal(x, x0) and torch.equal(r, r0)


def test_posterior_draws_follow_the_stream_position():
    c, shape = 2, (2, 3, 3)
    norm = LatentNormalizer(mean=[0.5, -1.0], std=[2.0, 0.5], posterior=True, seed=7, image_shape=shape)
    mu = torch.tensor([1.0, -2.0]).view(1, c, 1, 1).expand(4000, c, 3, 3)
    logvar = torch.log(torch.tensor([0.25, 4.0])).view(1, c, 1, 1).expand(4000, c, 3, 3)
    stored = torch.cat([mu, logvar], 1).half()
    a, b, other = norm(stored, 3, 96), norm(stored, 3, 96), norm(stored, 3, 112)
    assert torch.equal(a, b) and not torch.allclose(a, other)
    z = a * torch.tensor([2.0, 0.5]).view(1, c, 1, 1) + torch.tensor([0.5, -1.0]).view(1, c, 1, 1)
    np.testing.assert_allclose(z.mean((0, 2, 3)).numpy(), [1.0, -2.0], atol=0.03)
    np.testing.assert_allclose(z.std((0, 2, 3)).numpy(), [0.5, 2.0], rtol=0.03)
