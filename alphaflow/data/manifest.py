"""The manifest: a Parquet table with one row per shard (url, num_samples, bytes, sha256, class_counts) and the
data set's fields as JSON in the schema metadata (key b"afsweep"). Per-element statistics live beside it in
`stats.npz`. Shard URLs and side files are stored relative to the manifest's folder, so a prepared folder (or
S3 prefix) can be moved as a whole.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alphaflow.data import storage
from alphaflow.data.errors import DataError
from alphaflow.data.shards import ShardRecord

MANIFEST_NAME = "manifest.parquet"
STATS_NAME = "stats.npz"
FID_REFERENCE_NAME = "fid_reference.npz"
META_KEY = b"afsweep"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    url: str                               # where this manifest was read from
    shards: list[ShardRecord]              # shard urls resolved to absolute paths / s3:// URLs
    num_samples: int
    image_shape: tuple[int, int, int]      # latent (C, H, W) the model sees
    num_classes: int
    class_names: list[str]
    mean: list[float]                      # per channel, for x_norm = (latent - mean) / std
    std: list[float]
    codec: str                             # "identity" or "vae:PATH"
    dataset_id: str                        # e.g. "fashion-mnist:train"
    fid_reference: str | None              # local path (downloaded and cached if the manifest is on S3)
    fid_reference_url: str | None = None   # where the statistics are stored
    latent_dtype: str = "float16"
    latent_store: str = "mean"             # mean | posterior (stored shape has 2C channels)
    element_mean: np.ndarray | None = None  # (C, H, W)
    element_std: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        c, h, w = self.image_shape
        return (2 * c if self.latent_store == "posterior" else c, h, w)


def manifest_url(url: str) -> str:
    """A manifest URL from a folder, prefix or the manifest file itself."""
    url = str(url)
    if url.endswith(".parquet"):
        return url
    return storage.join(url, MANIFEST_NAME)


def write_manifest(dest: str, records: list[ShardRecord], fields: dict, element_mean: np.ndarray,
                   element_std: np.ndarray) -> str:
    """Write stats.npz, then manifest.parquet (last, so a manifest never points at missing files). Returns its URL."""
    buf = io.BytesIO()
    np.savez(buf, mean=element_mean.astype(np.float32), std=element_std.astype(np.float32))
    _put(buf.getvalue(), storage.join(dest, STATS_NAME))

    meta = dict(fields, format_version=FORMAT_VERSION, stats=STATS_NAME)
    table = pa.table({
        "url": pa.array([r.url for r in records], pa.string()),
        "num_samples": pa.array([r.num_samples for r in records], pa.int64()),
        "bytes": pa.array([r.bytes for r in records], pa.int64()),
        "sha256": pa.array([r.sha256 for r in records], pa.string()),
        "class_counts": pa.array([r.class_counts for r in records], pa.list_(pa.int64())),
    }).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    out = io.BytesIO()
    pq.write_table(table, out)
    url = storage.join(dest, MANIFEST_NAME)
    _put(out.getvalue(), url)
    return url


def _put(data: bytes, url: str) -> None:
    if storage.is_s3(url):
        storage.upload_bytes(data, url)
        return
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _cache_dir() -> Path:
    return Path(os.environ.get("AFSWEEP_CACHE_DIR", Path(tempfile.gettempdir()) / "afsweep-cache"))


def _local_copy(url: str) -> str:
    """A local path for a side file: itself when local; downloaded once into the cache when on S3."""
    if not storage.is_s3(url):
        return str(Path(url).resolve())
    bucket, key = storage.split_s3(url)
    dest = _cache_dir() / "objects" / bucket / key
    data = storage.read_bytes(url)
    if not dest.exists() or dest.read_bytes() != data:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _put(data, str(dest))
    return str(dest)


def read_manifest(url: str) -> Manifest:
    """Read and check a manifest (a folder, S3 prefix or the .parquet itself). Anything wrong: one-line DataError."""
    url = manifest_url(url)
    raw = storage.read_bytes(url)
    try:
        table = pq.read_table(pa.BufferReader(raw))
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except KeyError:
        raise DataError(f"{url}: not an afsweep manifest (no '{META_KEY.decode()}' metadata)") from None
    except Exception as e:
        raise DataError(f"{url}: corrupt manifest ({type(e).__name__})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{url}: manifest format {meta.get('format_version')}, this version reads {FORMAT_VERSION}")
    needed = ("num_samples", "image_shape", "num_classes", "mean", "std", "codec", "dataset_id")
    missing = [k for k in needed if k not in meta]
    if missing:
        raise DataError(f"{url}: manifest lacks {', '.join(missing)}")
    cols = table.to_pydict()
    base = storage.parent(url)
    shards = [ShardRecord(storage.join(base, u), int(n), int(b), s, list(c))
              for u, n, b, s, c in zip(cols["url"], cols["num_samples"], cols["bytes"], cols["sha256"],
                                       cols["class_counts"])]
    if not shards or sum(r.num_samples for r in shards) != meta["num_samples"]:
        raise DataError(f"{url}: shard rows hold {sum(r.num_samples for r in shards)} samples, "
                        f"the manifest says {meta['num_samples']}")
    fid_url = storage.join(base, meta["fid_reference"]) if meta.get("fid_reference") else None
    m = Manifest(
        url=url, shards=shards, num_samples=int(meta["num_samples"]), image_shape=tuple(meta["image_shape"]),
        num_classes=int(meta["num_classes"]), class_names=list(meta.get("class_names") or []),
        mean=[float(v) for v in meta["mean"]], std=[float(v) for v in meta["std"]], codec=meta["codec"],
        dataset_id=meta["dataset_id"], fid_reference=_local_copy(fid_url) if fid_url else None,
        fid_reference_url=fid_url, latent_dtype=meta.get("latent_dtype", "float16"),
        latent_store=meta.get("latent_store", "mean"),
        extra={k: v for k, v in meta.items() if k not in needed},
    )
    if len(m.mean) != m.image_shape[0] or len(m.std) != m.image_shape[0]:
        raise DataError(f"{url}: mean/std have {len(m.mean)}/{len(m.std)} channels, image_shape {m.image_shape}")
    if meta.get("stats"):
        stats_url = storage.join(base, meta["stats"])
        try:
            with np.load(io.BytesIO(storage.read_bytes(stats_url))) as z:
                m.element_mean, m.element_std = z["mean"], z["std"]
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{stats_url}: corrupt statistics file ({type(e).__name__})") from None
    return m
