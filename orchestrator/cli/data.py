"""`afsweep data`: prepare latent shards + manifest from a built-in data set, an image folder or numpy arrays,
and inspect (or verify) a prepared manifest. Errors are alphaflow.data.DataError: orchestrator/cli/main.py prints
them as one line and exits 2 for bad arguments (DataInputError), 1 otherwise."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from alphaflow.data import (
    DataError,
    DataInputError,
    prepare_arrays,
    prepare_builtin,
    prepare_image_folder,
    read_manifest,
    storage,
)
from alphaflow.data.prepare import _load_image, list_image_folder
from alphaflow.data.shards import decode_shard, sha256_bytes
from alphaflow.data.sources import BUILTIN_DATASETS, load_builtin
from alphaflow.metrics import compute_reference_stats, load_extractor


class _Progress:
    """Renders prepare's (stage, done, total) callbacks as one updating line on stderr."""

    def __init__(self):
        self.t0 = time.time()
        self.last = 0.0
        self.shards = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "shards":
            self.shards = done
            return
        now = time.time()
        if stage == "samples" and done < total and now - self.last < 0.2:
            return
        self.last = now
        if stage == "samples":
            pct = f" ({100 * done / total:.0f}%)" if total else ""
            rate = done / max(now - self.t0, 1e-9)
            msg = f"encoded {done}/{total} samples{pct}, {self.shards} shards written, {rate:.0f} samples/s"
        else:
            msg = "computing FID reference statistics..." if done < total else "FID reference statistics written"
        end = "\n" if (stage == "samples" and done == total) or stage != "samples" else ""
        click.echo(f"\r{msg}", nl=False, err=True)
        if end:
            click.echo("", err=True)


@click.group()
def data():
    """Prepare and inspect training data (latent shards + Parquet manifest)."""


@data.command()
@click.argument("source")
@click.option("--out", "out", required=True, help="Destination folder or s3://bucket/prefix.")
@click.option("--shard-size-mb", type=float, default=64.0, show_default=True, help="Target size of one tar shard.")
@click.option("--vae", type=click.Path(exists=True, file_okay=False), default=None,
              help="A diffusers AutoencoderKL folder (save_pretrained) to encode images with.")
@click.option("--resolution", type=int, default=None, help="Image folders: resize (center crop) to N x N.")
@click.option("--store", type=click.Choice(["mean", "posterior"]), default="mean", show_default=True,
              help="VAE latents: the posterior mean, or mean and log-variance (sampled when read).")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True,
              help="Image folders: grayscale or RGB.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the one-time shuffle before sharding.")
@click.option("--dataset-id", default=None, help="Name recorded in the manifest (default: from the source).")
@click.option("--fid-extractor", default=None,
              help="Image folders and arrays: feature extractor id for FID reference statistics of the images.")
@click.option("--no-fid-reference", is_flag=True, help="Built-in data sets: skip the FID reference statistics.")
def prepare(source, out, shard_size_mb, vae, resolution, store, channels, seed, dataset_id, fid_extractor,
            no_fid_reference):
    """Write SOURCE as shards + manifest.parquet under --out.

    SOURCE is a built-in data set (fashion-mnist, digits), an image folder (one sub-folder per class; needs
    --resolution), or a .npz/.npy file (arrays 'images' uint8 or 'latents' float, (N, C, H, W), and 'labels').
    """
    if shard_size_mb <= 0:
        raise DataInputError(f"--shard-size-mb: must be > 0, got {shard_size_mb}")
    progress = _Progress()
    t0 = time.time()
    p = Path(source)
    if source in BUILTIN_DATASETS:
        url = prepare_builtin(source, out, shard_size_mb=shard_size_mb, progress=progress, seed=seed,
                              fid_reference=not no_fid_reference)
    elif p.is_dir():
        if not resolution:
            raise DataInputError(f"{source}: an image folder needs --resolution")
        url = prepare_image_folder(source, out, resolution=resolution, vae=vae, store=store, channels=int(channels),
                                   shard_size_mb=shard_size_mb, progress=progress, seed=seed, dataset_id=dataset_id,
                                   fid_extractor=fid_extractor)
    elif p.suffix in (".npz", ".npy"):
        url = prepare_arrays(source, out, vae=vae, store=store, shard_size_mb=shard_size_mb, progress=progress,
                             seed=seed, dataset_id=dataset_id, fid_extractor=fid_extractor)
    else:
        what = "no such file or folder" if not p.exists() else "not a built-in data set"
        raise DataInputError(f"{source}: {what} (expected a built-in data set: {', '.join(BUILTIN_DATASETS)}; an "
                             f"image folder; or a .npz/.npy file)")
    click.echo(f"wrote {url} ({time.time() - t0:.1f} s)")
    _summary(url)


def _summary(url: str) -> None:
    m = read_manifest(url)
    total = sum(s.bytes for s in m.shards)
    click.echo(f"  dataset {m.dataset_id}: {m.num_samples} samples, {m.num_classes} classes, latents "
               f"{'x'.join(map(str, m.image_shape))} {m.latent_dtype} ({m.latent_store}), codec {m.codec}")
    click.echo(f"  {len(m.shards)} shards, {total / 1e6:.1f} MB; mean {_fmt(m.mean)}, std {_fmt(m.std)}")
    click.echo(f"  FID reference: {m.fid_reference_url or 'none'}")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


@data.command()
@click.argument("url")
@click.option("--verify", is_flag=True, help="Read every shard: check size, sha256 and that every sample decodes.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(url, verify, as_json):
    """Summarise the manifest at URL (a folder, s3:// prefix or manifest.parquet)."""
    m = read_manifest(url)
    if as_json:
        d = {k: v for k, v in vars(m).items() if k not in ("element_mean", "element_std", "shards")}
        d["shards"] = [vars(s) for s in m.shards]
        click.echo(json.dumps(d, indent=1, default=str))
    else:
        click.echo(m.url)
        _summary(m.url)
        for s in m.shards[:5]:
            click.echo(f"  {s.url}: {s.num_samples} samples, {s.bytes} bytes, sha256 {s.sha256[:12]}")
        if len(m.shards) > 5:
            click.echo(f"  ... {len(m.shards) - 5} more shards")
    if verify:
        bad = 0
        with click.progressbar(m.shards, label="verifying", file=sys.stderr) as shards:
            for s in shards:
                try:
                    data = storage.read_bytes(s.url, s.bytes)
                    if sha256_bytes(data) != s.sha256:
                        raise DataError(f"{s.url}: sha256 differs from the manifest's")
                    d = decode_shard(data, s.url, m.stored_shape, m.latent_dtype, s.num_samples)
                    if d.corrupt:
                        raise DataError(f"{s.url}: {len(d.corrupt)} corrupt samples, first {d.corrupt[0]}")
                except DataError as e:
                    bad += 1
                    click.echo(f"\n{e}", err=True)
        if bad:
            raise DataError(f"{m.url}: {bad} of {len(m.shards)} shards failed verification")
        click.echo(f"verified {len(m.shards)} shards, {m.num_samples} samples")


@data.command()
@click.argument("source")
@click.option("--extractor", required=True,
              help="Feature extractor: fashion-mnist-cnn, digits-cnn, inception-v3-tf[:PATH], dinov2:PATH.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the statistics (.npz).")
@click.option("--split", default="test", show_default=True, help="Built-in data sets: which split.")
@click.option("--resolution", type=int, default=None, help="Image folders: resize (center crop) to N x N.")
@click.option("--n", "limit", type=int, default=50_000, show_default=True,
              help="Use at most this many images (a seeded random subset).")
@click.option("--dataset-id", default=None, help="Recorded in the statistics (default: from the source).")
def reference(source, extractor, out, split, resolution, limit, dataset_id):
    """FID reference statistics (mu, sigma, real features for precision/recall/KID) of SOURCE's real images: a
    built-in data set (fashion-mnist, digits) or an image folder, for an existing data set or another extractor."""
    rng = np.random.default_rng(0)
    if source in BUILTIN_DATASETS:
        images, _ = load_builtin(source, split)
        images = images[np.sort(rng.permutation(len(images))[:limit])]
        dataset_id = dataset_id or f"{source}:{split}"
    else:
        files, _, _ = list_image_folder(source)
        if resolution is None:
            raise click.UsageError("an image folder needs --resolution")
        picked = np.sort(rng.permutation(len(files))[:limit])
        images = np.stack([_load_image(files[i], resolution, 3) for i in picked])
        dataset_id = dataset_id or Path(source).name
    ext = load_extractor(extractor)
    click.echo(f"computing {ext.id} statistics of {len(images)} images of {dataset_id}...", err=True)
    t0 = time.time()
    stats = compute_reference_stats(images, ext, dataset_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats.save(str(out))
    click.echo(f"{out}: n={stats.n}, {len(stats.mu)}-d features of {ext.id}, data set {dataset_id} "
               f"({time.time() - t0:.0f} s)")
