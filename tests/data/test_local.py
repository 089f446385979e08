"""The data path on local disk: shards + manifest round trip, rank/worker split, exact resume, normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from alphaflow.data import (
    DataError,
    get_codec,
    make_train_loader,
    prepare_arrays,
    prepare_builtin,
    prepare_image_folder,
    read_manifest,
)
from alphaflow.data.shards import _decode_regular, decode_shard
from alphaflow.data.storage import file_sha256
from tests.support.data_arrays import SHAPE, N, epoch_keys, make_arrays

torch.set_num_threads(1)

@pytest.fixture(scope="module")
def arrays_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("arrays")
    images, labels = make_arrays(d / "src.npz")
    url = prepare_arrays(str(d / "src.npz"), str(d / "out"), shard_size_mb=0.05, seed=3)
    return url, images, labels


def test_manifest_round_trip(arrays_set):
    url, images, labels = arrays_set
    m = read_manifest(url)
    assert m.num_samples == N and m.image_shape == SHAPE and m.num_classes == 5
    assert m.class_names == [f"c{i}" for i in range(5)] and m.codec == "identity"
    assert m.dataset_id == "src:train" and len(m.shards) > 10
    table = pq.read_table(m.url)
    assert table.column_names == ["url", "num_samples", "bytes", "sha256", "class_counts"]
    counts = np.sum([s.class_counts for s in m.shards], axis=0)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=5))
    perm = np.random.default_rng(3).permutation(N)   # prepare's one-time shuffle (seed=3)
    codec = get_codec(m.codec)
    seen = []
    stored = []
    for s in m.shards:
        assert Path(s.url).stat().st_size == s.bytes and file_sha256(s.url) == s.sha256
        data = Path(s.url).read_bytes()
        d = decode_shard(data, s.url, SHAPE, m.latent_dtype, s.num_samples)
        assert d.valid.all()
        assert _decode_regular(data, s.url, SHAPE, np.dtype(m.latent_dtype), s.num_samples) is not None
        slow = decode_shard(data, s.url, SHAPE, m.latent_dtype)   # the general parser agrees with the fast path
        assert slow.keys.tolist() == d.keys.tolist() and (slow.labels == d.labels).all()
        np.testing.assert_array_equal(slow.latents, d.latents)
        idx = perm[[int(k) for k in d.keys]]
        np.testing.assert_array_equal(codec.decode(d.latents), images[idx])   # identity codec is lossless
        np.testing.assert_array_equal(d.labels, labels[idx])
        seen += d.keys.tolist()
        stored.append(d.latents.astype(np.float64))
    assert sorted(seen) == [f"{i:09d}" for i in range(N)]
    allv = np.concatenate(stored)
    np.testing.assert_allclose(m.mean, allv.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(m.std, allv.std(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(m.element_mean, allv.mean(0), atol=1e-6)
    np.testing.assert_allclose(m.element_std, allv.std(0), atol=1e-5)


def test_webdataset_reads_our_shards(arrays_set):
    import webdataset as wds

    m = read_manifest(arrays_set[0])
    samples = list(wds.WebDataset(m.shards[0].url, shardshuffle=False).decode())
    assert len(samples) == m.shards[0].num_samples
    assert samples[0]["npy"].shape == SHAPE and isinstance(samples[0]["cls"], int)


def test_both_tar_parsers_list_and_decode_the_same(arrays_set, monkeypatch):
    """The hand parser and the standard library's tarfile give the same members, the same decoded shard and the
    same decoded run of samples (shards.TAR_PARSER chooses; the benchmark compares their speed)."""
    from alphaflow.data import shards

    m = read_manifest(arrays_set[0])
    rec = m.shards[1]
    data = Path(rec.url).read_bytes()
    assert list(shards._tarfile_members(data, rec.url)) == list(shards._tar_members(data, rec.url))
    period = shards.sample_period(m.stored_shape, m.latent_dtype)
    decoded = {}
    for parser in shards.TAR_PARSERS:
        monkeypatch.setattr(shards, "TAR_PARSER", parser)
        whole = shards.decode_shard(data, rec.url, m.stored_shape, m.latent_dtype, rec.num_samples)
        run = shards.decode_samples(memoryview(data)[3 * period:9 * period], rec.url, m.stored_shape,
                                    m.latent_dtype, 6)
        assert run is not None and not whole.corrupt
        decoded[parser] = (whole, run)
    for a, b in zip(decoded["hand"], decoded["tarfile"]):
        assert list(a.keys) == list(b.keys) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.latents, b.latents)
    assert list(decoded["hand"][1].keys) == list(decoded["hand"][0].keys[3:9])


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_epoch_is_disjoint_and_complete(arrays_set, workers):
    url = arrays_set[0]
    world, batch = 2, 16 if workers else 32
    keys = epoch_keys(url, world=world, workers=workers, batch=batch, batches=None)
    per_rank = [sum(len(b) for b in keys[r]) for r in range(world)]
    assert per_rank[0] == per_rank[1] == N // world                    # equal batch counts: DDP never waits
    flat = [k for r in range(world) for b in keys[r] for k in b]
    assert len(flat) == len(set(flat)) == N                            # disjoint and complete


def test_exact_epochs_reshuffle_and_drop_the_same_count(tmp_path):
    make_arrays(tmp_path / "a.npz", n=1000)
    url = prepare_arrays(str(tmp_path / "a.npz"), str(tmp_path / "out"), shard_size_mb=0.05)
    loader = make_train_loader(url, batch_size=16, rank=1, world_size=2, seed=5, mode="exact", num_workers=2)
    per_epoch = loader.batches_per_epoch
    assert per_epoch == (1000 // 64) * 2
    it = iter(loader)
    epochs = []
    for _ in range(2):
        ks = []
        for _ in range(per_epoch):
            next(it)
            ks += loader.last_keys
        epochs.append(ks)
    assert len(set(epochs[0])) == len(epochs[0]) == 1000 // 64 * 32   # this rank's half, each sample at most once
    assert epochs[0] != epochs[1]                                     # a new shuffle every epoch


@pytest.mark.parametrize("mode,workers", [("exact", 2), ("exact", 0), ("resampled", 2)])
def test_resume_continues_with_the_next_unseen_samples(arrays_set, mode, workers):
    url = arrays_set[0]
    kw = dict(batch_size=16, rank=1, world_size=2, seed=7, mode=mode, num_workers=workers)
    loader = make_train_loader(url, **kw)
    it = iter(loader)
    stop = 19 if workers else 21          # stops mid-epoch and mid-shard; the rest crosses into the next epoch
    for _ in range(stop):
        next(it)
    position = loader.position()
    expected = []
    for _ in range(25):
        next(it)
        expected.append(list(loader.last_keys))
    assert position["counts"] and position["mode"] == mode

    import json

    resumed = make_train_loader(url, position=json.loads(json.dumps(position)), **kw)
    it2 = iter(resumed)
    got = []
    for _ in range(25):
        next(it2)
        got.append(list(resumed.last_keys))
    assert got == expected


def test_position_for_another_layout_is_refused(arrays_set):
    url = arrays_set[0]
    loader = make_train_loader(url, batch_size=16, rank=0, world_size=2, mode="exact", num_workers=0)
    next(iter(loader))
    with pytest.raises(DataError, match="world_size=2, this loader world_size=4"):
        make_train_loader(url, batch_size=16, rank=0, world_size=4, mode="exact", position=loader.position())


def test_batches_are_normalised_and_decode_back_to_pixels(arrays_set):
    url, images, _ = arrays_set
    m = read_manifest(url)
    loader = make_train_loader(url, batch_size=N // 2, rank=0, world_size=2, mode="exact", num_workers=0)
    x, _ = next(iter(loader))
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05
    for c in range(SHAPE[0]):
        assert abs(float(x[:, c].mean())) < 0.08 and abs(float(x[:, c].std()) - 1) < 0.08
    mean = torch.tensor(m.mean).view(1, -1, 1, 1)
    std = torch.tensor(m.std).view(1, -1, 1, 1)
    pixels = get_codec(m.codec).decode(x * std + mean)
    perm = np.random.default_rng(3).permutation(N)
    np.testing.assert_array_equal(pixels, images[perm[[int(k) for k in loader.last_keys]]])


def test_identity_codec_round_trip_and_range():
    codec = get_codec("identity")
    img = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16)
    lat = codec.encode(img)
    assert lat.dtype == np.float32 and lat.min() == -1.0 and lat.max() == 1.0
    np.testing.assert_array_equal(codec.decode(torch.from_numpy(lat.astype(np.float16))), img)
    np.testing.assert_array_equal(codec.decode(np.full((1, 1, 2, 2), 7.0)), np.full((1, 1, 2, 2), 255))  # clipped


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in (("cats", 5), ("dogs", 3)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "src" / cls / f"{i}.png")
    url = prepare_image_folder(str(tmp_path / "src"), str(tmp_path / "out"), resolution=8)
    m = read_manifest(url)
    assert m.num_samples == 8 and m.image_shape == (3, 8, 8) and m.class_names == ["cats", "dogs"]
    assert np.sum([s.class_counts for s in m.shards], axis=0).tolist() == [5, 3]
    assert m.dataset_id == "src:train"


def test_builtin_digits_prepares_and_loads(tmp_path):
    url = prepare_builtin("digits", str(tmp_path / "digits"), shard_size_mb=0.2, fid_reference=False)
    m = read_manifest(tmp_path / "digits")
    assert url == str(tmp_path / "digits" / "manifest.parquet")
    assert m.dataset_id == "digits:train" and m.image_shape == (1, 8, 8) and m.num_samples == 1437
    assert m.fid_reference is None
    x, y = next(iter(make_train_loader(url, batch_size=8, seed=0)))
    assert x.shape == (8, 1, 8, 8) and int(y.max()) < 10


def test_fashion_mnist_prepare_with_fid_reference(tmp_path):
    """The real built-in path the sweeps use: 60k images, shards, and the test split's FID statistics."""
    from alphaflow.metrics import ReferenceStats

    url = prepare_builtin("fashion-mnist", str(tmp_path / "fm"))
    m = read_manifest(url)
    assert m.num_samples == 60000 and m.image_shape == (1, 28, 28) and m.class_names[0] == "t-shirt"
    ref = ReferenceStats.load(m.fid_reference)
    assert ref.n == 10000 and ref.dataset_id == "fashion-mnist:test" and ref.extractor_id == "fashion-mnist-cnn"


@pytest.mark.parametrize("mode", ["exact", "resampled"])
def test_a_rank_resumes_from_another_ranks_position(arrays_set, mode):
    """The worker saves rank 0's position only; every rank resumes from it exactly."""
    url = arrays_set[0]
    loaders = [make_train_loader(url, batch_size=16, rank=r, world_size=2, seed=2, mode=mode, num_workers=2)
               for r in range(2)]
    its = [iter(ld) for ld in loaders]
    for _ in range(13):
        for it in its:
            next(it)
    saved = loaders[0].position()
    want = []
    for _ in range(9):
        next(its[1])
        want.append(loaders[1].last_keys)
    resumed = make_train_loader(url, batch_size=16, rank=1, world_size=2, seed=2, mode=mode, num_workers=2,
                                position=saved)
    it = iter(resumed)
    got = []
    for _ in range(9):
        next(it)
        got.append(resumed.last_keys)
    assert got == want
