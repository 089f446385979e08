"""Sources -> codec -> shards + manifest + statistics (+ FID reference statistics of a test split).

Every source is shuffled once here (seeded), so each shard is a random sample of the data set and the reader can
shuffle shard order and within shards only. Statistics come from the stored (rounded) latents, in the same pass.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from alphaflow.data import storage
from alphaflow.data.codecs import IdentityCodec, get_codec
from alphaflow.data.errors import DataError, DataInputError
from alphaflow.data.manifest import FID_REFERENCE_NAME, write_manifest
from alphaflow.data.shards import ShardSink
from alphaflow.data.sources import BUILTIN_DATASETS, FASHION_MNIST_CLASSES, load_builtin
from alphaflow.metrics import compute_reference_stats

Progress = Callable[[str, int, int], None]   # (stage, done, total); total 0 when unknown
CHUNK = 1024                                 # images encoded and written per step
BUILTIN_EXTRACTORS = {"fashion-mnist": "fashion-mnist-cnn", "digits": "digits-cnn"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class _Stats:
    """Running float64 sums of the latents, per element; the per-channel numbers follow from them."""

    def __init__(self, stored_shape, store: str):
        c = stored_shape[0] // 2 if store == "posterior" else stored_shape[0]
        self.shape = (c, *stored_shape[1:])
        self.store = store
        self.n = 0
        self.s1 = np.zeros(self.shape)
        self.s2 = np.zeros(self.shape)

    def add(self, stored: np.ndarray) -> None:
        x = stored.astype(np.float64)
        if self.store == "posterior":  # z = mu + sigma eps: E z = E mu, E z^2 = E mu^2 + E sigma^2
            c = self.shape[0]
            mu, logvar = x[:, :c], x[:, c:]
            self.s1 += mu.sum(0)
            self.s2 += (mu * mu + np.exp(logvar)).sum(0)
        else:
            self.s1 += x.sum(0)
            self.s2 += (x * x).sum(0)
        self.n += len(x)

    def element(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s1 / self.n
        return mean, np.sqrt(np.maximum(self.s2 / self.n - mean ** 2, 1e-12))

    def channel(self) -> tuple[list[float], list[float]]:
        mean = self.s1.sum((1, 2)) / (self.n * self.shape[1] * self.shape[2])
        sq = self.s2.sum((1, 2)) / (self.n * self.shape[1] * self.shape[2])
        return mean.tolist(), np.sqrt(np.maximum(sq - mean ** 2, 1e-12)).tolist()


def write_dataset(dest: str, batches: Iterable[tuple[np.ndarray, np.ndarray]], *, total: int, num_classes: int,
                  class_names: list[str], codec: str, dataset_id: str, latent_store: str = "mean",
                  latent_dtype: str = "float16", shard_size_mb: float = 64.0,
                  fid_reference: Callable[[str], None] | None = None, source: str = "",
                  progress: Progress | None = None) -> str:
    """Write (latents float32 (n, C, H, W), labels (n,)) batches as shards + manifest under dest; returns its URL.

    `fid_reference(local_path)` writes the FID reference statistics; they are stored beside the manifest.
    """
    storage.check_destination(dest)
    sink = ShardSink(dest, int(shard_size_mb * 1024 * 1024), num_classes, progress=progress)
    stats = None
    written = 0
    for latents, labels in batches:
        stored = np.ascontiguousarray(latents, dtype=latent_dtype)
        labels = np.asarray(labels, np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{source}: label {int(labels.max())} outside 0..{num_classes - 1}")
        if stats is None:
            stats = _Stats(stored.shape[1:], latent_store)
        stats.add(stored)
        sink.write(stored, labels, [f"{written + i:09d}" for i in range(len(labels))])
        written += len(labels)
        if progress:
            progress("samples", written, total)
    records = sink.close()
    if written == 0:
        raise DataError(f"{source or dest}: no samples to write (empty source)")

    fid_name = None
    if fid_reference is not None:
        with tempfile.TemporaryDirectory(prefix="afsweep-ref-") as tmp:
            local = os.path.join(tmp, FID_REFERENCE_NAME)
            if progress:
                progress("fid-reference", 0, 1)
            fid_reference(local)
            storage.upload_file(local, storage.join(dest, FID_REFERENCE_NAME))
            fid_name = FID_REFERENCE_NAME
            if progress:
                progress("fid-reference", 1, 1)
    mean, std = stats.channel()
    emean, estd = stats.element()
    fields = {
        "num_samples": written, "image_shape": list(stats.shape), "num_classes": num_classes,
        "class_names": list(class_names), "mean": mean, "std": std, "codec": codec, "dataset_id": dataset_id,
        "fid_reference": fid_name, "latent_dtype": np.dtype(latent_dtype).name, "latent_store": latent_store,
        "source": source,
    }
    return write_manifest(dest, records, fields, emean, estd)


def _chunks(images: np.ndarray, labels: np.ndarray, encode, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    order = np.random.default_rng(seed).permutation(len(labels))
    for i in range(0, len(order), CHUNK):
        idx = order[i:i + CHUNK]
        yield encode(images[idx]), labels[idx]


def _compute_reference(images: np.ndarray, extractor_id: str, dataset_id: str, path: str) -> None:
    """FID reference statistics by the metrics package; its failures become a one-line DataError."""
    try:
        compute_reference_stats(images, extractor_id, dataset_id).save(path)
    except DataError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{dataset_id}: FID reference statistics with {extractor_id} failed: {msg}") from None


def _reference_writer(images: np.ndarray, extractor_id: str, dataset_id: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        _compute_reference(images, extractor_id, dataset_id, path)

    return write


def _dest(out: str) -> str:
    return str(out) if storage.is_s3(str(out)) else str(Path(out).resolve())


def prepare_builtin(name: str, out_dir: str, shard_size_mb: float = 64.0, progress: Progress | None = None,
                    seed: int = 0, fid_reference: bool = True) -> str:
    """A built-in data set's train split as identity-codec shards under out_dir (a folder or s3:// prefix), with
    FID reference statistics of its test split. Returns the manifest URL."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in data set {name!r} (known: {', '.join(BUILTIN_DATASETS)})")
    images, labels = load_builtin(name, "train")
    codec = IdentityCodec()
    ref = None
    if fid_reference:
        test_images, _ = load_builtin(name, "test")
        ref = _reference_writer(test_images, BUILTIN_EXTRACTORS[name], f"{name}:test")
    class_names = list(FASHION_MNIST_CLASSES) if name == "fashion-mnist" else [str(i) for i in range(10)]
    return write_dataset(
        _dest(out_dir), _chunks(images, labels, codec.encode, seed), total=len(labels), num_classes=10,
        class_names=class_names, codec=codec.name, dataset_id=f"{name}:train", shard_size_mb=shard_size_mb,
        fid_reference=ref, source=name, progress=progress)


def prepare_arrays(path: str, out_dir: str, *, vae: str | None = None, store: str = "mean",
                   shard_size_mb: float = 64.0, progress: Progress | None = None, seed: int = 0,
                   dataset_id: str | None = None, fid_extractor: str | None = None) -> str:
    """A .npz (`images` uint8 (N, C, H, W) or `latents` float (N, C, H, W); optional `labels`, `class_names`) or a
    .npy (one such array, no labels). Images go through the codec (identity, or the VAE at `vae`); latents are
    stored as given and recorded with codec `vae:PATH` when `vae` is given, else identity."""
    p = Path(path)
    if not p.is_file():
        raise DataInputError(f"{path}: not found")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif p.suffix == ".npy":
            a = np.load(p, allow_pickle=False)
            arrays = {"images" if a.dtype == np.uint8 else "latents": a}
        else:
            raise DataError(f"{path}: expected a .npz or .npy file")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a readable numpy file ({type(e).__name__})") from None
    data = arrays.get("images", arrays.get("latents"))
    if data is None:
        raise DataError(f"{path}: no 'images' or 'latents' array (found: {', '.join(arrays) or 'none'})")
    if data.ndim != 4 or len(data) == 0:
        raise DataError(f"{path}: expected a non-empty (N, C, H, W) array, got shape {data.shape}")
    labels = np.asarray(arrays.get("labels", np.zeros(len(data), np.int64))).astype(np.int64).reshape(-1)
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(labels)} labels for {len(data)} samples")
    names = [str(s) for s in arrays["class_names"]] if "class_names" in arrays else None
    num_classes = len(names) if names else int(labels.max()) + 1
    names = names or [str(i) for i in range(num_classes)]
    if "images" in arrays:
        if data.dtype != np.uint8:
            raise DataError(f"{path}: 'images' must be uint8, got {data.dtype}")
        codec = get_codec(f"vae:{vae}") if vae else IdentityCodec()
        encode = (lambda x: codec.encode(x, store=store)) if vae else codec.encode
        latent_store = store if vae else "mean"
    else:
        codec_name = f"vae:{Path(vae).resolve()}" if vae else "identity"
        encode = lambda x: np.asarray(x, np.float32)  # noqa: E731
        latent_store = "mean"
        codec = type("Recorded", (), {"name": codec_name})()
    ref = None
    if fid_extractor and "images" in arrays:
        ref = _reference_writer(data, fid_extractor, dataset_id or p.stem)
    return write_dataset(_dest(out_dir), _chunks(data, labels, encode, seed), total=len(data),
                         num_classes=num_classes, class_names=names, codec=codec.name,
                         dataset_id=dataset_id or f"{p.stem}:train", latent_store=latent_store,
                         shard_size_mb=shard_size_mb, fid_reference=ref, source=str(p), progress=progress)


def _load_image(path: Path, resolution: int, channels: int) -> np.ndarray:
    """Center-crop to a square, resize to resolution (bicubic), as uint8 (C, H, W)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((resolution, resolution), Image.BICUBIC)
            a = np.asarray(im, np.uint8)
    except Exception as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def list_image_folder(root: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """One sub-folder per class (sorted names -> labels 0..K-1); image files found recursively inside each."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{root}: not a folder")
    classes = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for k, c in enumerate(classes):
        found = sorted(f for f in (r / c).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        files += found
        labels += [k] * len(found)
    if not files:
        raise DataError(f"{root}: no images found (expected one sub-folder of images per class)")
    return files, np.asarray(labels, np.int64), classes


def prepare_image_folder(root: str, out_dir: str, *, resolution: int, vae: str | None = None, store: str = "mean",
                         channels: int = 3, shard_size_mb: float = 64.0, progress: Progress | None = None,
                         seed: int = 0, dataset_id: str | None = None, fid_extractor: str | None = None) -> str:
    """An image folder (one sub-folder per class), resized to resolution, encoded by the VAE at `vae` (or the
    identity codec). With fid_extractor, FID reference statistics of these images are stored too."""
    files, labels, classes = list_image_folder(root)
    codec = get_codec(f"vae:{vae}") if vae else IdentityCodec()
    order = np.random.default_rng(seed).permutation(len(files))

    def batches():
        for i in range(0, len(order), CHUNK):
            idx = order[i:i + CHUNK]
            imgs = np.stack([_load_image(files[j], resolution, channels) for j in idx])
            yield (codec.encode(imgs, store=store) if vae else codec.encode(imgs)), labels[idx]

    ref = None
    name = dataset_id or Path(root).resolve().name
    if fid_extractor:
        def ref(path: str) -> None:
            imgs = np.stack([_load_image(f, resolution, channels) for f in files])
            _compute_reference(imgs, fid_extractor, name, path)
    return write_dataset(_dest(out_dir), batches(), total=len(files), num_classes=len(classes),
                         class_names=classes, codec=codec.name, dataset_id=dataset_id or f"{name}:train",
                         latent_store=store if vae else "mean", shard_size_mb=shard_size_mb, fid_reference=ref,
                         source=str(root), progress=progress)
