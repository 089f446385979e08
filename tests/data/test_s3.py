"""The data path against a real S3 server (SeaweedFS on loopback): prepare to S3, split/resume from S3, the local
shard cache, the WebDataset gopen scheme, multipart uploads, retries, and S3 errors as one line."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

from alphaflow.data import DataError, make_train_loader, prepare_arrays, read_manifest, storage
from alphaflow.data.shards import sha256_bytes
from tests.support.data_arrays import N, epoch_keys, make_arrays
from tests.support.s3_fixtures import start_weed, stop_weed

pytestmark = pytest.mark.s3
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def s3_set(s3_server, tmp_path_factory):
    """The local tests' data set, prepared straight to an S3 prefix."""
    d = tmp_path_factory.mktemp("s3src")
    make_arrays(d / "src.npz")
    old = {k: os.environ.get(k) for k in s3_server.env()}
    os.environ.update(s3_server.env())
    storage.reset_clients()
    try:
        yield prepare_arrays(str(d / "src.npz"), s3_server.prefix("set"), shard_size_mb=0.05, seed=3)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.reset_clients()


def test_prepare_to_s3_and_read_back(s3_env, s3_set):
    assert s3_set.startswith("s3://") and s3_set.endswith("/manifest.parquet")
    m = read_manifest(s3_set)
    assert m.num_samples == N and all(s.url.startswith(s3_set.rsplit("/", 1)[0] + "/shard-") for s in m.shards)
    body = storage.s3_client().get_object(Bucket=s3_env.bucket, Key=m.shards[0].url.split("/", 3)[3])["Body"].read()
    assert sha256_bytes(body) == m.shards[0].sha256 and len(body) == m.shards[0].bytes
    assert s3_env.secret_key not in str(vars(m)) and s3_env.access_key not in str(vars(m))


def test_s3_exact_epoch_is_disjoint_and_complete(s3_env, s3_set):
    keys = epoch_keys(s3_set, world=2, workers=2, batch=16)
    flat = [k for r in keys for b in keys[r] for k in b]
    assert [sum(len(b) for b in keys[r]) for r in keys] == [N // 2, N // 2]
    assert len(flat) == len(set(flat)) == N


def test_s3_resume_by_keys(s3_env, s3_set):
    kw = dict(batch_size=16, rank=0, world_size=2, seed=11, mode="exact", num_workers=2)
    loader = make_train_loader(s3_set, **kw)
    it = iter(loader)
    for _ in range(23):
        next(it)
    pos = loader.position()
    want = []
    for _ in range(20):
        next(it)
        want.append(loader.last_keys)
    resumed = make_train_loader(s3_set, position=pos, **kw)
    it2 = iter(resumed)
    got = []
    for _ in range(20):
        next(it2)
        got.append(resumed.last_keys)
    assert got == want


def test_local_cache_serves_shards_after_the_bucket_loses_them(s3_env, tmp_path):
    make_arrays(tmp_path / "a.npz", n=100)
    url = prepare_arrays(str(tmp_path / "a.npz"), s3_env.prefix("cache"), shard_size_mb=0.05)
    m = read_manifest(url)
    cache = tmp_path / "cache"
    loader = make_train_loader(url, batch_size=10, mode="exact", cache_dir=str(cache))
    it = iter(loader)
    first = []
    for _ in range(10):   # one epoch: every shard read once, from S3, into the cache
        next(it)
        first += loader.last_keys
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s.sha256}.tar" for s in m.shards)
    client = storage.s3_client()
    for s in m.shards:
        client.delete_object(Bucket=s3_env.bucket, Key=s.url.split("/", 3)[3])
    again = make_train_loader(url, batch_size=10, mode="exact", cache_dir=str(cache))
    it = iter(again)
    second = []
    for _ in range(10):
        next(it)
        second += again.last_keys
    assert second == first
    with pytest.raises(DataError, match="shard-000000.tar: not found|shard-00000[0-9].tar: not found"):
        next(iter(make_train_loader(url, batch_size=10, mode="exact")))


def test_webdataset_pipeline_reads_s3_through_our_gopen_scheme(s3_env, s3_set):
    import webdataset as wds

    storage.register_gopen()
    m = read_manifest(s3_set)
    urls = [s.url for s in m.shards[:2]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node).decode())
    assert len(samples) == sum(s.num_samples for s in m.shards[:2])
    assert samples[0]["npy"].shape == (2, 6, 6)


def test_multipart_upload_is_verified(s3_env, tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_CHUNK", 5 * 1024 * 1024)  # S3's smallest part size
    blob = np.random.default_rng(0).integers(0, 256, 11 * 1024 * 1024 + 123, dtype=np.uint8).tobytes()
    (tmp_path / "big").write_bytes(blob)
    url = s3_env.prefix("mp") + "/big.bin"
    storage.upload_file(tmp_path / "big", url)
    head = storage.s3_client().head_object(Bucket=s3_env.bucket, Key=url.split("/", 3)[3])
    assert head["ETag"].strip('"').endswith("-3")   # really went multipart
    assert storage.read_bytes(url, len(blob)) == blob


def test_s3_errors_are_one_line(s3_env, s3_set, monkeypatch):
    def one_line(fn, *needles):
        with pytest.raises(DataError) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg and all(n in msg for n in needles), msg
        assert s3_env.secret_key not in msg
        return msg

    prefix = s3_set.rsplit("/", 1)[0]
    one_line(lambda: read_manifest(prefix + "-missing"), prefix + "-missing/manifest.parquet", "not found")
    one_line(lambda: read_manifest("s3://no-such-bucket-afsweep/x"), "no-such-bucket-afsweep", "does not exist")
    one_line(lambda: prepare_arrays("/nonexistent.npz", "s3://no-such-bucket-afsweep/x"), "not found")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    storage.reset_clients()
    one_line(lambda: read_manifest(s3_set), s3_set, "access denied")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # nothing listens on the discard port
    monkeypatch.setattr(storage, "RETRIES", 1)
    monkeypatch.setattr(storage, "BACKOFF_S", 0.01)
    monkeypatch.setattr(storage, "OUTAGE_S", 0.0)
    storage.reset_clients()
    one_line(lambda: read_manifest(s3_set), s3_set, "cannot reach the S3 endpoint")


def test_transient_outage_is_retried(tmp_path, monkeypatch):
    """The server goes away and comes back on the same ports: the read waits it out."""
    server = start_weed(tmp_path / "weed", "afsweep-retry", "retry-key", "retry-secret")
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        storage.reset_clients()
        url = f"s3://{server.bucket}/obj.bin"
        storage.upload_bytes(b"x" * 1000, url)
        stop_weed(server)
        restarted = {}

        def restart():
            time.sleep(1.0)
            restarted["server"] = start_weed(tmp_path / "weed", server.bucket, "retry-key", "retry-secret",
                                             ports=server.ports, wait=False)

        t = threading.Thread(target=restart)
        t.start()
        t0 = time.time()
        assert storage.read_bytes(url, 1000) == b"x" * 1000
        assert time.time() - t0 > 0.9
        t.join()
        server = restarted["server"]
    finally:
        stop_weed(server)
        storage.reset_clients()


def test_cli_prepares_to_s3(s3_env, tmp_path):
    from click.testing import CliRunner

    from orchestrator.cli import main

    make_arrays(tmp_path / "a.npz", n=40)
    dest = s3_env.prefix("cli")
    r = CliRunner().invoke(main, ["data", "prepare", str(tmp_path / "a.npz"), "--out", dest, "--shard-size-mb", "0.02"])
    assert r.exit_code == 0, r.output
    assert f"wrote {dest}/manifest.parquet" in r.output
    r = CliRunner().invoke(main, ["data", "inspect", dest, "--verify"])
    assert r.exit_code == 0 and "verified" in r.output, r.output
