"""Launch checks every shard before any trial starts: a missing, truncated or (with verify: sha256) corrupted shard
is exit code 2 and one line naming it, and nothing is created in MLflow for the sweep that never ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alphaflow.data import prepare_arrays, read_manifest
from alphaflow.data.preflight import ShardCheckError, check_shards
from tests.support.fault_table import record

CLI = [sys.executable, "-m", "orchestrator.cli"]

SPEC = """
name: preflight
data: {{manifest: {manifest}, verify: {verify}}}
base: {{preset: tiny-cpu, overrides: {{total_steps: 10, model.size: micro}}}}
search: {{num_trials: 1}}
"""


@pytest.fixture
def prepared(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "src.npz", images=rng.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8),
             labels=rng.integers(0, 3, 300))
    prepare_arrays(str(tmp_path / "src.npz"), str(tmp_path / "data"), shard_size_mb=0.01)
    return tmp_path / "data"


def _launch(tmp_path: Path, data: Path, verify: str = "size"):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(manifest=data / "manifest.parquet", verify=verify))
    run_dir = tmp_path / "runs"
    res = subprocess.run(CLI + ["launch", str(spec), "--run-dir", str(run_dir)], capture_output=True, text=True,
                         timeout=300)
    return res, run_dir


def _no_sweep_run(run_dir: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    exp = MlflowClient(uri).get_experiment_by_name("afsweep")
    assert exp is None or not MlflowClient(uri).search_runs([exp.experiment_id]), "a run was started"


def test_missing_shard_is_exit_2_naming_it(tmp_path, prepared):
    shards = read_manifest(str(prepared)).shards
    assert len(shards) >= 3
    Path(shards[-1].url).unlink()  # the last shard: a trial reading in order would find it late
    res, run_dir = _launch(tmp_path, prepared)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and shards[-1].url in err[0] and "not found" in err[0], res.stderr
    _no_sweep_run(run_dir)


@pytest.mark.faults
def test_truncated_shard_is_exit_2(tmp_path, prepared):
    rec = read_manifest(str(prepared)).shards[1]
    with open(rec.url, "r+b") as f:
        f.truncate(rec.bytes - 100)
    res, run_dir = _launch(tmp_path, prepared)
    assert res.returncode == 2, res.stderr
    assert rec.url in res.stderr and "truncated" in res.stderr
    _no_sweep_run(run_dir)
    record("truncated shard", "refused before any trial (exit 2, names the shard)", 0, 0, 0, 0, "-")


@pytest.mark.faults
def test_flipped_byte_passes_size_but_not_sha256(tmp_path, prepared):
    rec = read_manifest(str(prepared)).shards[0]
    data = bytearray(Path(rec.url).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(rec.url).write_bytes(bytes(data))
    m = read_manifest(str(prepared))
    assert check_shards(m, "size") == len(m.shards)  # same size: only the hash can tell
    with pytest.raises(ShardCheckError, match="sha256 differs"):
        check_shards(m, "sha256")
    res, _ = _launch(tmp_path, prepared, verify="sha256")
    assert res.returncode == 2 and rec.url in res.stderr and "sha256" in res.stderr, res.stderr
    record("corrupted shard (flipped byte), verify: sha256", "refused before any trial (exit 2, names the shard)",
           0, 0, 0, 0, "-")


@pytest.mark.s3
def test_s3_missing_and_short_objects(s3_env, tmp_path):
    from alphaflow.data import storage

    rng = np.random.default_rng(1)
    np.savez(tmp_path / "src.npz", images=rng.integers(0, 256, (300, 1, 8, 8), dtype=np.uint8),
             labels=rng.integers(0, 3, 300))
    url = prepare_arrays(str(tmp_path / "src.npz"), s3_env.prefix("preflight"), shard_size_mb=0.01)
    m = read_manifest(url)
    assert check_shards(m, "sha256") == len(m.shards)
    client = storage.s3_client()
    key = m.shards[-1].url.split("/", 3)[3]
    client.put_object(Bucket=s3_env.bucket, Key=key, Body=b"short")
    with pytest.raises(ShardCheckError, match="size 5 bytes"):
        check_shards(m)
    client.delete_object(Bucket=s3_env.bucket, Key=key)
    with pytest.raises(ShardCheckError) as e:
        check_shards(m)
    assert m.shards[-1].url in str(e.value) and "not found" in str(e.value)


def test_good_data_passes(prepared):
    m = read_manifest(str(prepared))
    assert check_shards(m, "sha256") == len(m.shards)
