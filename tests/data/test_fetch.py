"""How the reader fetches: a slot reads only its own run of a boundary shard (S3: ranged GETs, several at once,
into one buffer), the batches don't depend on the store or the part size, and the buffers it reuses are never
ones that anything still views."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from alphaflow.data import DataError, SlotPlan, make_train_loader, prepare_arrays, read_manifest, storage
from alphaflow.data.shards import sample_period
from tests.support.data_arrays import N, make_arrays

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("blocks")
    make_arrays(d / "src.npz")
    # ~100 samples a shard, so a window of 240 samples (2 ranks x 2 workers) starts and ends inside shards
    return prepare_arrays(str(d / "src.npz"), str(d / "out"), shard_size_mb=0.2, seed=3)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("afsweep-prefetch")]


def _count_fetches(monkeypatch) -> list[tuple[str, int, int]]:
    """Every byte range the reader asks storage for (this process: loader workers 0)."""
    fetched = []
    real = storage.read_range

    def counting(url, start, end, *args, **kwargs):
        fetched.append((url, start, end))
        return real(url, start, end, *args, **kwargs)

    monkeypatch.setattr(storage, "read_range", counting)
    return fetched


def _epoch(url: str, world: int = 2, workers: int = 2, batch: int = 16) -> list[list[list[str]]]:
    """Every rank's batches (lists of keys) over one exact epoch, in order."""
    out = []
    for rank in range(world):
        ld = make_train_loader(url, batch_size=batch, rank=rank, world_size=world, seed=4, mode="exact",
                               num_workers=workers)
        it = iter(ld)
        batches = []
        for _ in range(ld.batches_per_epoch):
            next(it)
            batches.append(list(ld.last_keys))
        it.close()
        out.append(batches)
    return out


def test_closing_the_loader_ends_its_prefetch_thread(local_set):
    for workers in (0, 2):
        ld = make_train_loader(local_set, batch_size=16, rank=0, world_size=1, seed=4, num_workers=workers)
        it = iter(ld)
        for _ in range(3):
            next(it)
        if workers == 0:
            assert _prefetch_threads(), "the in-process reader prefetches the next run in a thread"
        it.close()
        assert _prefetch_threads() == []


def test_each_sample_is_fetched_once_per_epoch(local_set, monkeypatch):
    m = read_manifest(local_set)
    assert len(m.shards) >= 4
    period = sample_period(m.stored_shape, m.latent_dtype)
    fetched = _count_fetches(monkeypatch)
    epoch0 = []
    for rank in range(2):                                              # 2 ranks x 1 slot, in this process
        fetched.clear()
        ld = make_train_loader(local_set, batch_size=16, rank=rank, world_size=2, seed=4, mode="exact")
        it = iter(ld)
        for _ in range(ld.batches_per_epoch):
            next(it)
        it.close()
        assert _prefetch_threads() == []   # close() joined the reader's prefetch thread: no fetch after it
        # this slot's runs in epoch 0, from the plan; the reader may already have fetched the next epoch's first
        plan = SlotPlan([s.num_samples for s in m.shards], "exact", 4, rank, 2, 16)
        runs, have = [], 0
        for shard, lo, hi, _ in plan.segments(0):
            if have == plan.per_slot:
                break
            runs.append((m.shards[shard].url, lo * period, hi * period))
            have += hi - lo
        assert fetched[:len(runs)] == runs and len(fetched) <= len(runs) + 1
        epoch0 += runs
    # the windows cut a shard at sample 480: each rank fetched only its own part of it
    assert any(lo > 0 for _, lo, _ in epoch0)
    spans = sorted(epoch0)
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:])), "a sample fetched twice"
    assert sum(hi - lo for _, lo, hi in epoch0) == N * period          # every sample once, nothing else


@pytest.mark.s3
def test_s3_batches_equal_local_ones(local_set, s3_env, monkeypatch):
    src = read_manifest(local_set)
    dest = s3_env.prefix("blocks")
    from pathlib import Path

    for s in src.shards:
        storage.upload_file(s.url, f"{dest}/{Path(s.url).name}")
    for side in ("stats.npz", "manifest.parquet"):
        storage.upload_file(str(Path(local_set).parent / side), f"{dest}/{side}")
    period = sample_period(src.stored_shape, src.latent_dtype)
    monkeypatch.setattr(storage, "S3_PART_BYTES", 9 * period - 100)   # runs come as several parts, cut anywhere
    local = _epoch(local_set, workers=2)
    remote = _epoch(f"{dest}/manifest.parquet", workers=2)
    assert remote == local


@pytest.mark.s3
def test_ranged_reads_return_the_bytes_and_catch_a_replaced_object(s3_env, monkeypatch):
    monkeypatch.setattr(storage, "S3_PART_BYTES", 1000)
    blob = np.random.default_rng(1).integers(0, 256, 10_500, dtype=np.uint8).tobytes()
    url = s3_env.prefix("ranged") + "/blob.bin"
    storage.upload_bytes(blob, url)
    assert storage.read_bytes(url, len(blob)) == blob                       # 11 parts, 4 at a time
    assert bytes(storage.read_range(url, 123, 4567, len(blob))) == blob[123:4567]
    assert bytes(storage.read_range(url, 10_000, 10_500)) == blob[10_000:]
    storage.upload_bytes(blob[:9000], url)                                  # replaced by a shorter object
    for read in (lambda: storage.read_range(url, 0, 5000, len(blob)), lambda: storage.read_bytes(url, len(blob))):
        with pytest.raises(DataError) as e:
            read()
        assert "\n" not in str(e.value) and url in str(e.value) and "the manifest says 10500" in str(e.value)


def test_batches_the_trainer_keeps_are_never_overwritten(local_set):
    kw = dict(batch_size=16, rank=0, world_size=1, seed=2, mode="exact", num_workers=0)
    ld = make_train_loader(local_set, **kw)
    it = iter(ld)
    kept = [next(it)[0] for _ in range(12)]              # held while the loader goes on (past its reuse ring)
    dropped = [next(it)[0].clone() for _ in range(6)]     # let go at once: their buffers get reused
    fresh = iter(make_train_loader(local_set, **kw))
    want = [next(fresh)[0] for _ in range(18)]
    for got, ref in zip(kept + dropped, want):
        assert torch.equal(got, ref)
    assert len({x.data_ptr() for x in kept}) == 12


@pytest.mark.parametrize("raw", [False, True])
def test_worker_chunks_keep_coming_in_pooled_buffers(local_set, monkeypatch, raw):
    """The training process gives every chunk buffer back once it has handed out its batches (kept or not): the workers
    never fall back to fresh shared memory, whose handle would cross the socket with every chunk."""
    from alphaflow.data import loader as loader_module

    chunks, pooled = [], []
    real_next, real_received = loader_module._WorkerChunks.__next__, loader_module._ChunkPool.received
    monkeypatch.setattr(loader_module._WorkerChunks, "__next__", lambda self: chunks.append(1) or real_next(self))
    monkeypatch.setattr(loader_module._ChunkPool, "received",
                        lambda self, *a: pooled.append(1) or real_received(self, *a))
    ld = make_train_loader(local_set, batch_size=16, rank=0, world_size=1, seed=2, mode="exact", num_workers=2)
    it = ld.raw_batches() if raw else iter(ld)
    kept = [next(it)[0] for _ in range(4 * ld.batches_per_epoch)]
    it.close()
    assert len(kept) == 4 * ld.batches_per_epoch and len(chunks) > 8 and len(pooled) == len(chunks)


def test_uncopied_raw_batches_are_the_batches_until_the_next_is_drawn(local_set):
    """raw_batches(copy=False): with workers, views of the shared chunks, valid until the next batch is drawn."""
    kw = dict(batch_size=16, rank=0, world_size=1, seed=2, mode="exact", num_workers=2)
    views = make_train_loader(local_set, **kw).raw_batches(copy=False)
    copies = make_train_loader(local_set, **kw).raw_batches()
    for _ in range(40):
        (x, y), (x2, y2) = next(views), next(copies)
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_receive_fills_the_view_piece_by_piece(monkeypatch):
    """A body (a real botocore StreamingBody, here over bytes) is read into the view in RECEIVE_STEP pieces; one
    that ends early returns what came (the caller then retries)."""
    import io

    from botocore.response import StreamingBody

    monkeypatch.setattr(storage, "RECEIVE_STEP", 1000)
    data = bytes(range(256)) * 40
    out = bytearray(len(data))
    assert storage._receive(StreamingBody(io.BytesIO(data), len(data)), memoryview(out)) == len(data)
    assert bytes(out) == data
    short = bytearray(len(data) + 10)                   # the server sent less than asked
    assert storage._receive(StreamingBody(io.BytesIO(data), None), memoryview(short)) == len(data)
    assert bytes(short[:len(data)]) == data


def test_run_buffers_come_back_once_nothing_views_them():
    """The reader's S3 receive buffers: a buffer is lent again only after everything decoded from it is gone."""
    from alphaflow.data.loader import _RunBuffers

    def address(view: memoryview) -> int:
        return np.frombuffer(view, np.uint8).ctypes.data

    pool = _RunBuffers(64, keep=2)
    a = pool.lend()
    first = address(a)
    latents = np.frombuffer(a[16:48], np.float32)[::2]   # what a decoded run keeps: a view of a slice of it
    del a
    b = pool.lend()
    assert address(b) != first                           # still viewed through `latents`
    del latents
    assert address(pool.lend()) == first                 # free again (and dropped again at once)
    c, d = pool.lend(), pool.lend()                      # b and c are the pooled two; d is beyond `keep`
    pooled = {address(b), address(c)}
    assert len(pooled) == 2 and address(d) not in pooled
    del b, c, d
    e, f, g = pool.lend(), pool.lend(), pool.lend()      # the pooled two come back; d's memory was not pooled
    assert {address(e), address(f)} == pooled and address(g) not in pooled
