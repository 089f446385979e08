"""Bad input on the data path: each case is one DataError line that names the file, shard or URL."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from alphaflow.data import DataError, make_train_loader, prepare_arrays, prepare_image_folder, read_manifest
from alphaflow.data.storage import file_sha256

torch.set_num_threads(1)


def one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


@pytest.fixture(params=["hand", "tarfile"])
def tar_parser(request, monkeypatch) -> str:
    """Either tar parser (shards.TAR_PARSER): damaged shards are the same one-line errors by both."""
    from alphaflow.data import shards

    monkeypatch.setattr(shards, "TAR_PARSER", request.param)
    return request.param


@pytest.fixture
def prepared(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "src.npz", images=rng.integers(0, 256, (200, 1, 4, 4), dtype=np.uint8),
             labels=rng.integers(0, 3, 200))
    prepare_arrays(str(tmp_path / "src.npz"), str(tmp_path / "out"), shard_size_mb=0.1)
    return tmp_path / "out"


def first_batches(url, n=30, **kw):
    it = iter(make_train_loader(str(url), batch_size=10, mode="exact", **kw))
    for _ in range(n):
        next(it)


def rewrite_row(out: Path, index: int) -> None:
    """Make the manifest agree with a shard's current size and hash (a writer that produced a bad shard)."""
    t = pq.read_table(out / "manifest.parquet")
    cols = t.to_pydict()
    shard = out / cols["url"][index]
    cols["bytes"][index] = shard.stat().st_size
    cols["sha256"][index] = file_sha256(shard)
    pq.write_table(pa.table(cols, schema=t.schema), out / "manifest.parquet")


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError) as e:
        read_manifest(str(tmp_path / "nowhere"))
    one_line(e, str(tmp_path / "nowhere" / "manifest.parquet"), "not found")


def test_corrupt_manifest(prepared):
    (prepared / "manifest.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError) as e:
        read_manifest(str(prepared))
    one_line(e, "manifest.parquet", "corrupt manifest")


def test_parquet_without_our_metadata(tmp_path):
    pq.write_table(pa.table({"a": [1]}), tmp_path / "manifest.parquet")
    with pytest.raises(DataError) as e:
        read_manifest(str(tmp_path))
    one_line(e, "not an afsweep manifest")


def test_missing_shard(prepared):
    (prepared / "shard-000001.tar").unlink()
    with pytest.raises(DataError) as e:
        first_batches(prepared)
    one_line(e, "shard-000001.tar", "not found")


def test_shard_size_mismatch(prepared):
    p = prepared / "shard-000000.tar"
    p.write_bytes(p.read_bytes()[:-700])
    with pytest.raises(DataError) as e:
        first_batches(prepared)
    one_line(e, "shard-000000.tar", "the manifest says")


def test_shard_sha256_mismatch(prepared):
    p = prepared / "shard-000000.tar"
    data = bytearray(p.read_bytes())
    data[2000] ^= 0xFF
    p.write_bytes(bytes(data))
    first_batches(prepared, n=2)  # the default check is the size: a same-size change passes unnoticed ...
    with pytest.raises(DataError) as e:  # ... verify="sha256" hashes every shard it reads
        first_batches(prepared, verify="sha256")
    one_line(e, "shard-000000.tar", "sha256")


def test_truncated_tar_member(prepared, tar_parser):
    p = prepared / "shard-000000.tar"
    data = p.read_bytes()
    p.write_bytes(data[:data.find(b"\x93NUMPY", 5000) + 50])   # cuts into a member's data
    rewrite_row(prepared, 0)
    with pytest.raises(DataError) as e:
        first_batches(prepared)
    one_line(e, "shard-000000.tar", "truncated tar member")
    from alphaflow.data.shards import _tar_members

    *_, (_, start, size) = _tar_members(data, "x")
    p.write_bytes(data[:start + (size + 511) // 512 * 512])   # complete members, no end-of-archive blocks
    rewrite_row(prepared, 0)
    with pytest.raises(DataError) as e:
        first_batches(prepared)
    one_line(e, "shard-000000.tar", "truncated tar (no end-of-archive")


def test_not_a_tar(prepared, tar_parser):
    p = prepared / "shard-000000.tar"
    p.write_bytes(b"x" * 4096)
    rewrite_row(prepared, 0)
    with pytest.raises(DataError) as e:
        first_batches(prepared)
    one_line(e, "shard-000000.tar", "not a tar")


def _corrupt_one_sample(out: Path) -> None:
    """Overwrite one sample's .npy magic inside shard 0 (same size), and record the new hash."""
    p = out / "shard-000000.tar"
    data = bytearray(p.read_bytes())
    at = data.find(b"\x93NUMPY", 4 * 1024)
    data[at:at + 6] = b"BROKEN"
    p.write_bytes(bytes(data))
    rewrite_row(out, 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_sample_fails_by_default(prepared, tar_parser, workers):
    _corrupt_one_sample(prepared)
    with pytest.raises(DataError) as e:
        first_batches(prepared, num_workers=workers)
    one_line(e, "shard-000000.tar", "corrupt sample", "on_corrupt='skip'")


def test_corrupt_sample_skipped_counted_and_logged(prepared, tar_parser, caplog):
    _corrupt_one_sample(prepared)
    loader = make_train_loader(str(prepared), batch_size=10, mode="exact", on_corrupt="skip")
    it = iter(loader)
    keys = []
    with caplog.at_level(logging.WARNING, logger="alphaflow.data"):
        for _ in range(20):   # one epoch of 200 samples
            next(it)
            keys += loader.last_keys
    assert loader.skipped == 1 and loader.position()["skipped"] == 1
    assert len(set(keys[:199])) == 199     # the other 199 samples, then the next epoch begins
    assert any("skipping 1 corrupt samples" in r.message and "shard-000000.tar" in r.message for r in caplog.records)


def test_empty_sources(tmp_path):
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 1, 4, 4), np.uint8))
    with pytest.raises(DataError) as e:
        prepare_arrays(str(tmp_path / "empty.npz"), str(tmp_path / "o1"))
    one_line(e, "empty.npz", "non-empty")
    (tmp_path / "folder" / "cls").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        prepare_image_folder(str(tmp_path / "folder"), str(tmp_path / "o2"), resolution=8)
    one_line(e, "folder", "no images found")
    with pytest.raises(DataError) as e:
        prepare_arrays(str(tmp_path / "missing.npz"), str(tmp_path / "o3"))
    one_line(e, "missing.npz", "not found")


def test_unreadable_image(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        prepare_image_folder(str(tmp_path / "src"), str(tmp_path / "out"), resolution=8)
    one_line(e, "bad.png", "not a readable image")


def test_too_little_data_for_the_ranks(prepared):
    with pytest.raises(DataError) as e:
        make_train_loader(str(prepared), batch_size=64, world_size=2, rank=0, mode="exact", num_workers=2)
    one_line(e, "manifest.parquet", "cannot fill one batch")


def test_cli_prepare_inspect_and_errors(tmp_path):
    from orchestrator.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (50, 1, 4, 4), dtype=np.uint8),
             labels=rng.integers(0, 2, 50))
    runner = CliRunner()
    r = runner.invoke(main, ["data", "prepare", str(tmp_path / "a.npz"), "--out", str(tmp_path / "out"),
                             "--shard-size-mb", "0.02"])
    assert r.exit_code == 0, r.output
    assert "50 samples, 2 classes" in r.output
    r = runner.invoke(main, ["data", "inspect", str(tmp_path / "out"), "--verify"])
    assert r.exit_code == 0 and "verified" in r.output, r.output
    r = runner.invoke(main, ["data", "inspect", str(tmp_path / "out"), "--json"])
    assert json.loads(r.output)["num_samples"] == 50
    shutil.copy(tmp_path / "a.npz", tmp_path / "b.txt")
    r = runner.invoke(main, ["data", "prepare", str(tmp_path / "b.txt"), "--out", str(tmp_path / "o2")])
    assert r.exit_code == 2 and r.output.strip().count("\n") == 0 and "b.txt" in r.output, r.output
    r = runner.invoke(main, ["data", "inspect", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and r.output.startswith("afsweep: error: ") and "not found" in r.output
