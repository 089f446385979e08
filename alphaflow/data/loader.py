"""The training reader: shards -> normalised batches, forever, split across ranks and DataLoader workers.

Every (rank, worker) pair is a "slot" that reads its own deterministic stream of samples; a slot's place in its
stream is one integer (samples consumed), so a position is a few integers and resuming skips whole shards without
reading them.

- exact: epoch e shuffles the shard order (seed, e); the shards are laid end to end and cut into equal windows of
  `per_slot = floor(N / (slots * B)) * B` samples, one per slot. Every slot, so every rank, gets the same number
  of batches per epoch (DDP never waits); the windows are disjoint and cover all but the N mod (slots * B)
  samples left at the end of that epoch's order (a different few each epoch). A window may start or end inside a
  shard: each of the two slots then fetches only its own run of that shard's samples (a ranged read; data sets are
  shuffled when written, so a run is as random as the whole shard). Each slot shuffles the samples of each of its
  shard runs, seeded by (seed, e, shard, run start).
- resampled: each slot draws whole shards with replacement (probability proportional to their sample counts),
  seeded by (seed, slot, draw), and shuffles inside each: WebDataset's resampled mode, made resumable.

Batches are formed inside the workers and handed out in strict rotation over the workers, which the position
records (`next_worker`), so a resumed loader continues with exactly the batches that would have come. A worker
sends several batches per message (a "chunk", up to CHUNK_BYTES), written into pooled shared-memory buffers: per
message torch passes each new shared tensor's handle over a socket, a round trip between the processes that would
otherwise cost more than the batch itself. The trainer process splits the chunks back into batches, each carrying
its own stream counter, so chunk boundaries change nothing about order or resuming.

Every batch the loader yields belongs to the caller, to keep as long as it likes: iterating copies each batch to
the device and normalises it into a new tensor, raw_batches() copies it out of the chunk (raw_batches(copy=False)
hands out the view instead, valid until the next batch is drawn). A chunk's buffer goes
back to its worker once the trainer process has handed out all of its batches and been asked for the next one:
the loader knows what it handed out, nothing depends on counting references.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from alphaflow.data import storage
from alphaflow.data.errors import DataError
from alphaflow.data.manifest import Manifest, read_manifest
from alphaflow.data.normalize import LatentNormalizer
from alphaflow.data.shards import (
    DecodedShard,
    decode_samples,
    decode_shard,
    is_regular_size,
    sample_period,
    sha256_bytes,
)

log = logging.getLogger("alphaflow.data")

MODES = ("resampled", "exact")
POSITION_VERSION = 2   # 2: a window's part of a shard is a contiguous run of it (1: a random subset)
CHUNK_BYTES = 8 << 20


class SlotPlan:
    """Which shard samples one slot reads, as a function of its sample counter (no I/O)."""

    def __init__(self, sizes: list[int], mode: str, seed: int, slot: int, num_slots: int, batch_size: int):
        self.sizes = np.asarray(sizes, np.int64)
        self.total = int(self.sizes.sum())
        self.mode, self.seed, self.slot, self.num_slots = mode, int(seed), slot, num_slots
        self.per_slot = (self.total // (num_slots * batch_size)) * batch_size
        self._p = self.sizes / self.total

    def segments(self, counter: int) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(shard index, lo, hi, order): this slot reads samples [lo, hi) of the shard, in `order` (indices into
        that run), in stream order from stream position `counter`."""
        if self.mode == "exact":
            epoch, skip = divmod(counter, self.per_slot)
            while True:
                order = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.sizes))
                lo = self.slot * self.per_slot
                hi = lo + self.per_slot
                start = 0
                for s in order:
                    end = start + int(self.sizes[s])
                    a, b = max(lo, start), min(hi, end)
                    if a < b:
                        if skip >= b - a:
                            skip -= b - a
                        else:
                            perm = np.random.default_rng([self.seed, 1, epoch, int(s), a - start]).permutation(b - a)
                            yield int(s), a - start, b - start, perm[skip:]
                            skip = 0
                    start = end
                    if start >= hi:
                        break
                epoch, skip = epoch + 1, 0
        else:
            draw, skip = 0, counter
            while True:
                rng = np.random.default_rng([self.seed, 2, self.slot, draw])
                s = int(rng.choice(len(self.sizes), p=self._p))
                n = int(self.sizes[s])
                if skip >= n:
                    skip -= n
                else:
                    yield s, 0, n, rng.permutation(n)[skip:]
                    skip = 0
                draw += 1


class _Run:
    """Decoded samples of one shard run, and their latents as a torch view for gathering batches."""

    def __init__(self, decoded: DecodedShard):
        self.decoded = decoded
        with warnings.catch_warnings():   # a view of a read-only mapping: torch warns, we only ever read it
            warnings.simplefilter("ignore", UserWarning)
            self.latents = torch.from_numpy(decoded.latents)


class _RunBuffers:
    """Receive buffers for S3 runs, reused (fresh memory costs page faults). Each loan is a new numpy view of a
    buffer, and everything decoded from a run (memoryview slices, the strided latents, their torch view) refers
    back to that view: once the decoded run is gone the view is garbage, and weakref.finalize puts the buffer back
    on the free list. With none free a loan is fresh memory; at most `keep` buffers are pooled."""

    def __init__(self, nbytes: int, keep: int):
        self.nbytes, self.keep = nbytes, keep
        self._free: deque[np.ndarray] = deque()   # append and pop are atomic: a finalizer may run in any thread
        self._pooled = 0
        self._lock = threading.Lock()

    def lend(self) -> memoryview:
        try:
            buf = self._free.pop()
        except IndexError:
            buf = np.empty(self.nbytes, np.uint8)
            with self._lock:
                if self._pooled >= self.keep:
                    return memoryview(buf)   # not pooled: freed with its last view, as any array
                self._pooled += 1
        loan = buf[:]
        weakref.finalize(loan, self._free.append, buf).atexit = False
        return memoryview(loan)


class _Reader:
    """Reads and decodes runs of samples [lo, hi) of shards: only those samples' bytes when the shard is laid out
    regularly (ours are; S3: parallel ranged GETs), else the whole shard (with retries, checks and an optional
    content-addressed cache)."""

    def __init__(self, m: Manifest, verify: str, cache_dir: str | None, on_corrupt: str):
        self.m, self.verify, self.cache_dir, self.on_corrupt = m, verify, cache_dir, on_corrupt
        self._last: tuple[tuple[int, int, int], _Run] | None = None
        self._pending: dict[tuple[int, int, int], Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.period = sample_period(m.stored_shape, m.latent_dtype)   # bytes per sample in shards we wrote
        # S3 run buffers, reused: the run being batched and the one being fetched hold two, a third covers the
        # hand-over
        self._buffers = _RunBuffers(max(r.num_samples for r in m.shards) * self.period, keep=3)

    def prefetch(self, run: tuple[int, int, int]) -> None:
        """Start reading and decoding a run in a background thread (reads and numpy release the GIL)."""
        if run in self._pending or (self._last is not None and self._last[0] == run):
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="afsweep-prefetch")
        self._pending[run] = self._pool.submit(self._decoded, run)

    def close(self) -> None:
        """Drop the reads not started and wait for the one running: no fetch outlives its loader."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def run(self, run: tuple[int, int, int]) -> _Run:
        """Samples [lo, hi) of shard i, run = (i, lo, hi)."""
        if self._last is not None and self._last[0] == run:
            return self._last[1]
        pending = self._pending.pop(run, None)
        r = pending.result() if pending is not None else self._decoded(run)
        corrupt = r.decoded.corrupt
        if corrupt:
            url = self.m.shards[run[0]].url
            if self.on_corrupt != "skip":
                raise DataError(f"{url}: corrupt sample {corrupt[0]} "
                                f"({len(corrupt)} in this shard; on_corrupt='skip' skips them)")
            log.warning("%s: skipping %d corrupt samples", url, len(corrupt))
        self._last = (run, r)
        return r

    def _decoded(self, run: tuple[int, int, int]) -> _Run:
        i, lo, hi = run
        rec = self.m.shards[i]
        shape, dtype = self.m.stored_shape, self.m.latent_dtype
        whole = self.verify == "sha256" or (self.cache_dir and storage.is_s3(rec.url))
        if not whole and is_regular_size(rec.num_samples, rec.bytes, self.period):
            out = self._buffers.lend() if storage.is_s3(rec.url) else None
            data = storage.read_range(rec.url, lo * self.period, hi * self.period, rec.bytes, out)
            d = decode_samples(data, rec.url, shape, dtype, hi - lo)
            if d is not None:
                return _Run(d)
        # the whole shard: verified, cached, or not laid out regularly (the general parser marks corrupt samples)
        d = decode_shard(self._bytes(i), rec.url, shape, dtype, rec.num_samples)
        return _Run(d.part(lo, hi))

    def _bytes(self, i: int):
        rec = self.m.shards[i]
        if self.cache_dir and storage.is_s3(rec.url):
            local = Path(self.cache_dir) / f"{rec.sha256}.tar"
            if local.exists() and local.stat().st_size == rec.bytes:
                return storage.map_local(str(local), rec.bytes)
            data = storage.read_bytes(rec.url, rec.bytes)
            if sha256_bytes(data) != rec.sha256:
                raise DataError(f"{rec.url}: sha256 differs from the manifest's (corrupt or replaced shard)")
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{id(data)}.tmp")
            tmp.write_bytes(data)
            tmp.replace(local)
            return data
        if storage.is_s3(rec.url):
            data = storage.read_bytes(rec.url, rec.bytes)
        else:
            data = storage.map_local(rec.url, rec.bytes)
        if self.verify == "sha256" and sha256_bytes(data) != rec.sha256:
            raise DataError(f"{rec.url}: sha256 differs from the manifest's (corrupt or replaced shard)")
        return data


def _stored_dtype(m: Manifest) -> torch.dtype:
    return torch.from_numpy(np.empty(0, m.latent_dtype)).dtype


class _ChunkPool:
    """Shared-memory buffers for the workers' chunks, made before the workers start (so every process maps the
    same ones) and reused: a chunk in a pooled buffer crosses to the trainer as its index alone, and neither side
    pays page faults on fresh memory again. The trainer process gives a buffer back (give_back) once it has handed
    out every batch of its chunk and been asked for the next one: by then each batch has been copied to the
    device, normalised into a new tensor, or copied for raw_batches(), so no batch the trainer holds views a
    pooled buffer. With none free a worker takes fresh shared memory, sent along with the chunk."""

    def __init__(self, slots: int, per_slot: int, shape: tuple[int, ...], dtype: torch.dtype):
        self.shape, self.dtype = shape, dtype
        self.buffers = [[self._shared(shape) for _ in range(per_slot)] for _ in range(slots)]
        self.busy = torch.zeros((slots, per_slot), dtype=torch.uint8).share_memory_()   # 1: a worker's or ours

    def _shared(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shape, dtype=self.dtype).share_memory_()

    def take(self, slot: int, n: int) -> tuple[int, torch.Tensor]:
        """Worker side: (buffer index, or -1 for fresh memory; an (n, B, C, H, W) tensor to fill)."""
        free = np.flatnonzero(self.busy[slot].numpy() == 0)
        if len(free) == 0:
            return -1, self._shared((n, *self.shape[1:]))
        i = int(free[0])
        self.busy[slot, i] = 1
        return i, self.buffers[slot][i][:n]

    def received(self, slot: int, i: int, n: int) -> torch.Tensor:
        """Trainer side: the chunk a worker wrote into buffer i."""
        return self.buffers[slot][i][:n]

    def give_back(self, slot: int, i: int) -> None:
        """Trainer side: every batch of buffer i's chunk is handed out and done with."""
        self.busy[slot, i] = 0


class _WorkerChunks:
    """The DataLoader's iterator over the workers' chunks, referenced from here alone: close() drops it, and the
    DataLoader shuts its worker processes down as its iterator is collected, even while a traceback still holds
    the frames that used it (they hold this object, not the iterator)."""

    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def close(self) -> None:
        self._it = None


class _SlotStream(torch.utils.data.IterableDataset):
    """The batches of this rank's slots; in a DataLoader worker, chunks of batches of the slot that worker serves."""

    def __init__(self, loader: TrainLoader, pool: _ChunkPool | None = None):
        super().__init__()
        self.pool = pool
        self.m = loader.manifest
        self.mode, self.seed, self.rank = loader.mode, loader.seed, loader.rank
        self.nw, self.num_slots, self.batch_size = loader.slots_per_rank, loader.num_slots, loader.batch_size
        self.counts = list(loader._counts)
        self.shift = loader._next_worker
        self.verify, self.cache_dir, self.on_corrupt = loader.verify, loader.cache_dir, loader.on_corrupt
        self.chunk = loader.chunk

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        if info is not None:
            torch.set_num_threads(1)
            yield from self._chunks((info.id + self.shift) % self.nw)
            return
        # no workers: every slot of this rank, rotated, in this process, one batch at a time
        locals_ = [(w + self.shift) % self.nw for w in range(self.nw)]
        streams = [self._batches(local) for local in locals_]
        shape, dtype = (self.batch_size, *self.m.stored_shape), _stored_dtype(self.m)
        try:
            while True:
                for local, s in zip(locals_, streams):
                    parts, counter, skipped = next(s)
                    x = torch.empty(shape, dtype=dtype)   # the consumer's own (malloc reuses blocks freed before)
                    y, keys = self._gather(x, parts)
                    yield {"x": x, "y": torch.from_numpy(y), "keys": keys.tolist(), "local": local,
                           "counter": counter, "skipped": skipped}
        finally:
            for s in streams:
                s.close()   # each closes its reader, whose prefetch thread ends here

    def _chunks(self, local: int):
        """Batches of one slot, several to a message: each message to the trainer process costs a round trip
        between the processes (the shared-memory handle is passed over a socket), so one per batch would dominate.
        The chunks grow 1, 2, 4, ... up to self.chunk batches, so the first batch comes quickly. Chunk boundaries
        don't matter for resuming: every batch carries its own stream counter."""
        with contextlib.closing(self._batches(local)) as batches:   # its reader's thread ends with it
            size = 1
            while True:
                buf, x = self.pool.take(local, size)   # shared memory: the chunk crosses to the trainer uncopied
                y = np.empty((size, self.batch_size), np.int64)
                keys, counters, skipped = [], [], []
                try:
                    for j in range(size):
                        parts, counter, skip = next(batches)
                        y[j], k = self._gather(x[j], parts)
                        keys.append(k)
                        counters.append(counter)
                        skipped.append(skip)
                except DataError as e:
                    # the batches before the error still count (and come in their turn); then the error, as one line:
                    # torch would wrap an exception in a multi-line traceback, so the trainer process re-raises it
                    if keys:
                        yield self._message(buf, x, y, keys, local, counters, skipped)
                    yield {"error": str(e), "local": local}
                    return
                yield self._message(buf, x, y, keys, local, counters, skipped)
                size = min(2 * size, self.chunk)

    @staticmethod
    def _message(buf, x, y, keys, local, counters, skipped) -> dict:
        n = len(keys)
        return {"buf": buf, "x": x[:n] if buf < 0 else None, "n": n, "y": y[:n], "keys": keys, "local": local,
                "counters": counters, "skipped": skipped}

    def _batches(self, local: int):
        """(parts, counter, skipped) per batch of one slot: parts are (run, sample indices) pairs."""
        slot = self.rank * self.nw + local
        plan = SlotPlan([r.num_samples for r in self.m.shards], self.mode, self.seed, slot, self.num_slots,
                        self.batch_size)
        reader = _Reader(self.m, self.verify, self.cache_dir, self.on_corrupt)
        counter = self.counts[local]
        segments = plan.segments(counter)
        upcoming = next(segments)
        parts: list[tuple[_Run, np.ndarray]] = []
        have = skipped = 0
        try:
            while True:
                shard_index, lo, hi, idx = upcoming
                upcoming = next(segments)
                d = reader.run((shard_index, lo, hi))
                # read the next run while this one is turned into batches (not before: the first run would then share
                # the bandwidth with the second, and the first batch wait for both)
                reader.prefetch(upcoming[:3])
                pos = 0
                while pos < len(idx):
                    take = idx[pos:pos + self.batch_size - have]
                    pos += len(take)
                    counter += len(take)
                    if d.decoded.corrupt:
                        good = d.decoded.valid[take]
                        skipped += int((~good).sum())
                        take = take[good]
                    if len(take):
                        parts.append((d, take))
                        have += len(take)
                    if have == self.batch_size:
                        yield parts, counter, skipped
                        parts, have, skipped = [], 0, 0
        finally:
            reader.close()   # no fetch outlives the stream

    @staticmethod
    def _gather(x: torch.Tensor, parts) -> tuple[np.ndarray, np.ndarray]:
        """Copies one batch's latents, in their stored dtype, into x (B, C, H, W); returns its labels and keys.
        Normalising is left to the trainer's device (see normalize.py)."""
        y = np.concatenate([d.decoded.labels[i] for d, i in parts])
        keys = np.concatenate([d.decoded.keys[i] for d, i in parts])
        at = 0
        for d, i in parts:
            torch.index_select(d.latents, 0, torch.from_numpy(i), out=x[at:at + len(i)])
            at += len(i)
        return y, keys


def _as_is(item: dict) -> dict:
    """The DataLoader's collate_fn: torch's default would turn the labels (numpy) into a tensor in the worker, and
    every tensor crosses to the trainer by its own socket round trip; a small numpy array rides in the message."""
    return item


class TrainLoader:
    """An endless iterable of (x float32 (B, C, H, W) normalised, y int64 (B,)) on `device`, for one rank.

    The workers gather batches in the stored dtype; they cross to `device` as they are and are normalised there
    (normalize.py): on a GPU node the CPU never widens or scales a latent. `raw_batches()` is the same stream
    before that step.

    `position()` is a JSON-able dict; `make_train_loader(..., position=p)` continues with the next unseen sample.
    A position saved by another rank of the same layout works too (ranks advance in lockstep).
    `last_keys` holds the sample keys of the batch yielded last.
    """

    def __init__(self, url: str, batch_size: int, rank: int, world_size: int, seed: int, mode: str,
                 num_workers: int, position: dict | None, on_corrupt: str, verify: str, cache_dir: str | None,
                 prefetch: int, device: str | torch.device = "cpu"):
        if mode not in MODES:
            raise DataError(f"data mode {mode!r}: expected one of {', '.join(MODES)}")
        if on_corrupt not in ("raise", "skip"):
            raise DataError(f"on_corrupt {on_corrupt!r}: expected raise or skip")
        if verify not in ("size", "sha256"):
            raise DataError(f"verify {verify!r}: expected size or sha256")
        if not (0 <= rank < world_size) or batch_size < 1 or num_workers < 0:
            raise DataError(f"loader: bad rank {rank} / world_size {world_size} / batch_size {batch_size} / "
                            f"num_workers {num_workers}")
        storage.register_gopen()
        self.url = url
        self.manifest = read_manifest(url)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, int(seed)
        self.mode, self.num_workers, self.prefetch = mode, num_workers, prefetch
        self.on_corrupt, self.verify, self.cache_dir = on_corrupt, verify, cache_dir
        self.slots_per_rank = max(1, num_workers)
        self.device = torch.device(device)
        self.normalize = LatentNormalizer(self.manifest.mean, self.manifest.std,
                                          self.manifest.latent_store == "posterior", self.seed,
                                          self.manifest.image_shape)
        # batches per worker message (see _SlotStream._chunks): up to CHUNK_BYTES of stored latents, at most 16
        batch_bytes = _stored_dtype(self.manifest).itemsize * batch_size * int(np.prod(self.manifest.stored_shape))
        self.chunk = int(min(16, max(1, CHUNK_BYTES // batch_bytes)))
        self.num_slots = world_size * self.slots_per_rank
        n = self.manifest.num_samples
        if mode == "exact" and n < self.num_slots * batch_size:
            raise DataError(f"{self.manifest.url}: {n} samples cannot fill one batch of {batch_size} on each of "
                            f"{world_size} ranks x {self.slots_per_rank} loader workers")
        self._counts = [0] * self.slots_per_rank
        self._next_worker = 0
        self.skipped = 0
        self.batches = 0                        # yielded by this rank so far (all ranks keep in step)
        self.last_keys: list[str] = []
        if position is not None:
            self._restore(position)

    @property
    def batches_per_epoch(self) -> int:
        """Batches each rank yields per epoch (exact mode: one pass; resampled: N / global batch)."""
        if self.mode == "exact":
            return (self.manifest.num_samples // (self.num_slots * self.batch_size)) * self.slots_per_rank
        return max(1, self.manifest.num_samples // (self.world_size * self.batch_size))

    def position(self) -> dict:
        return {"version": POSITION_VERSION, "mode": self.mode, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "num_samples": self.manifest.num_samples, "counts": list(self._counts),
                "next_worker": self._next_worker, "skipped": self.skipped, "batches": self.batches}

    def _restore(self, p: dict) -> None:
        where = f"{self.manifest.url}: saved loader position"
        if not isinstance(p, dict) or p.get("version") != POSITION_VERSION:
            raise DataError(f"{where} is not a position of this loader version")
        now = {"mode": self.mode, "seed": self.seed, "world_size": self.world_size,
               "num_workers": self.num_workers, "batch_size": self.batch_size,
               "num_samples": self.manifest.num_samples}
        for k, v in now.items():
            if p.get(k) != v:
                raise DataError(f"{where} has {k}={p.get(k)!r}, this loader {k}={v!r} (resume needs the same)")
        self.batches = int(p["batches"])
        if p.get("rank") == self.rank:
            self._counts = [int(c) for c in p["counts"]]
            self._next_worker = int(p["next_worker"])
            self.skipped = int(p.get("skipped", 0))
            return
        # Another rank's position (the worker saves rank 0's): all ranks yield batches in lockstep, and without
        # skipped samples a slot's counter is (batches it served) x batch_size, so the batch count is enough.
        if p.get("skipped"):
            log.warning("%s: resuming rank %d from rank %s's position, which skipped %s corrupt samples: this "
                        "rank may re-read or miss as many", where, self.rank, p.get("rank"), p.get("skipped"))
        nw = self.slots_per_rank
        self._counts = [(self.batches - j + nw - 1) // nw * self.batch_size for j in range(nw)]
        self._next_worker = self.batches % nw

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # item["x"] may view a worker's chunk buffer until the next item is asked for: it is copied to the device
        # or normalised into a new tensor here, before that (a pageable host buffer is free again once the copy
        # to a GPU has returned). Every batch yielded is the trainer's own.
        with contextlib.closing(self._items(own=False)) as items:
            for item in items:
                x = item.pop("x").to(self.device, non_blocking=True)
                slot = self.rank * self.slots_per_rank + item["local"]
                x = self.normalize(x, slot, item["counter"])
                yield x, item["y"].to(self.device, non_blocking=True)

    def raw_batches(self, copy: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same batches (and position) as iterating, before the copy to the device and normalising: latents in
        the stored dtype and layout (a posterior's mean and log-variance channels), on the CPU. What a GPU node's
        CPU does per batch. copy=False, for a consumer that uses each batch at once (moves it to a device, say):
        with loader workers a batch is then a view of its worker's shared chunk, valid until the next batch is
        drawn, as iterating uses it; that saves a copy of every batch (with 2 workers on 2 CPUs, ~25% of the
        rate)."""
        with contextlib.closing(self._items(own=copy)) as items:
            for item in items:
                yield item.pop("x"), item["y"]

    def _items(self, own: bool) -> Iterator[dict]:
        """The batches as dicts. own: every item["x"] is the consumer's to keep; else it may view a worker's chunk
        buffer, valid until the next item is asked for (see _ChunkPool)."""
        if self.num_workers == 0:
            items = iter(_SlotStream(self))
            batches = items
        else:
            # `prefetch` counts batches per worker; a message holds up to `chunk` of them. Pool buffers per worker:
            # the messages in flight, the one being filled, the one being handed out here, one the trainer holds.
            messages = max(1, -(-self.prefetch // self.chunk))
            pool = _ChunkPool(self.slots_per_rank, messages + 3,
                              (self.chunk, self.batch_size, *self.manifest.stored_shape), _stored_dtype(self.manifest))
            ds = _SlotStream(self, pool)
            items = _WorkerChunks(iter(torch.utils.data.DataLoader(
                ds, batch_size=None, num_workers=self.num_workers, prefetch_factor=messages,
                persistent_workers=False, collate_fn=_as_is)))
            batches = self._unchunk(items, pool, own)
        try:
            for item in batches:
                local = item["local"]
                self._counts[local] = item["counter"]
                self._next_worker = (local + 1) % self.slots_per_rank
                self.skipped += item["skipped"]
                if item["skipped"]:
                    log.warning("%s: %d corrupt samples skipped so far on rank %d", self.url, self.skipped,
                                self.rank)
                self.last_keys = item["keys"]
                self.batches += 1
                yield item
        finally:
            # stop the workers now: a traceback that keeps this frame alive would otherwise keep them (and their
            # queue threads) running until interpreter exit
            items.close()   # in this process: the slot streams and their readers' prefetch threads end here

    def _unchunk(self, chunks: _WorkerChunks, pool: _ChunkPool, own: bool) -> Iterator[dict]:
        """The workers' chunks as single batches in strict rotation over the slots, as without chunks: the batch
        order (and so what a position means) does not depend on the chunk sizes. A pooled chunk buffer is given
        back once its last batch has been handed out and the next one is asked for; own: each batch is copied out
        of it first."""
        queues: list[deque] = [deque() for _ in range(self.slots_per_rank)]
        local = self._next_worker
        while True:
            while not queues[local]:
                c = next(chunks)
                q = queues[c["local"]]
                if "error" in c:
                    q.append(c)
                    continue
                pooled = c["buf"] >= 0   # else fresh shared memory, sent along: nobody reuses it
                x = pool.received(c["local"], c["buf"], c["n"]) if pooled else c["x"]
                if own and pooled:
                    x = [b.clone() for b in x]   # a batch the caller owns; the buffer can go back at once
                    pool.give_back(c["local"], c["buf"])
                    pooled = False
                y = torch.from_numpy(c["y"])
                last = len(c["keys"]) - 1
                for j, (keys, counter, skipped) in enumerate(zip(c["keys"], c["counters"], c["skipped"])):
                    q.append({"x": x[j], "y": y[j], "keys": keys, "counter": counter, "skipped": skipped,
                              "local": c["local"], "buffer": c["buf"] if pooled and j == last else -1})
            item = queues[local].popleft()
            if "error" in item:
                raise DataError(item["error"])
            item["keys"] = item["keys"].tolist()
            buffer = item.pop("buffer")
            yield item
            if buffer >= 0:   # the consumer is back for the next batch: done with every batch of that chunk
                pool.give_back(item["local"], buffer)
            local = (local + 1) % self.slots_per_rank


def make_train_loader(url: str, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                      mode: str = "resampled", num_workers: int = 0, position: dict | None = None, *,
                      on_corrupt: str = "raise", verify: str = "size", cache_dir: str | None = None,
                      prefetch: int = 2, device: str | torch.device = "cpu") -> TrainLoader:
    """The training batches of one rank, forever, on `device`. See the module docstring for how samples are
    split."""
    return TrainLoader(url, batch_size, rank, world_size, seed, mode, num_workers, position, on_corrupt, verify,
                       cache_dir, prefetch, device)
