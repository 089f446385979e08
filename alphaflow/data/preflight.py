"""Checks of a data set before anything trains on it: every shard the manifest names is there with its recorded
size (and, when asked, its sha256). A sweep runs this before its first trial, so a missing or truncated shard is
one line naming it, not a trial that fails hours in (or, worse, one that never reads the bad shard)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alphaflow.data import storage
from alphaflow.data.errors import DataError
from alphaflow.data.manifest import Manifest
from alphaflow.data.shards import ShardRecord, sha256_bytes


class ShardCheckError(DataError):
    """A shard of the manifest is missing, of the wrong size or the wrong content: bad input, before any work."""


def _size(url: str) -> int:
    """The stored size of a file or S3 object; ShardCheckError naming the URL when it is not there."""
    if not storage.is_s3(url):
        try:
            return Path(url).stat().st_size
        except FileNotFoundError:
            raise ShardCheckError(f"{url}: shard not found") from None
    bucket, key = storage.split_s3(url)
    client = storage.s3_client()
    try:
        head = storage._s3_call(url, lambda: client.head_object(Bucket=bucket, Key=key))
    except DataError as e:
        if str(e).endswith(": not found"):
            raise ShardCheckError(f"{url}: shard not found") from None
        raise
    return int(head["ContentLength"])


def check_shard(rec: ShardRecord, verify: str) -> None:
    size = _size(rec.url)
    if size != rec.bytes:
        raise ShardCheckError(f"{rec.url}: size {size} bytes, the manifest says {rec.bytes} (truncated or replaced)")
    if verify == "sha256" and sha256_bytes(storage.read_bytes(rec.url, rec.bytes)) != rec.sha256:
        raise ShardCheckError(f"{rec.url}: sha256 differs from the manifest's (corrupted or replaced)")


def check_shards(m: Manifest, verify: str = "size", parallel: int = 8) -> int:
    """Raise ShardCheckError for the first bad shard (in manifest order); return how many were checked.

    Sizes are HEAD requests (S3) or stats (local): cheap, done in parallel. sha256 reads every byte once."""
    if verify not in ("size", "sha256"):
        raise DataError(f"verify {verify!r}: expected size or sha256")
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        results = list(pool.map(lambda r: _try(r, verify), m.shards))
    for err in results:
        if err is not None:
            raise err
    return len(m.shards)


def _try(rec: ShardRecord, verify: str) -> DataError | None:
    try:
        check_shard(rec, verify)
    except DataError as e:
        return e
    return None
