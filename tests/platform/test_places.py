"""Where a sweep keeps its state (orchestrator/platform/places.py): each URL checked before any trial with one line
that names it and never its secret, credentials kept out of what Ray records, and specs that cannot hold secrets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from orchestrator.platform import places
from orchestrator.platform.places import PlaceError
from orchestrator.spec import SpecError, parse_spec

CLI = [sys.executable, "-m", "orchestrator.cli"]


def test_a_password_in_a_url_setting_is_refused_by_the_spec():
    for key, section in (("storage", "search"), ("storage", "run"), ("uri", "tracking")):
        with pytest.raises(SpecError, match=f"{section}.{key}: a password in the URL"):
            parse_spec({"name": "x", section: {key: "postgresql://me:hunter2@db:5432/optuna"}}, "s.yaml")
    spec = parse_spec({"name": "x", "search": {"storage": "postgresql://me@db:5432/optuna"},
                       "run": {"storage": "s3://b/p"}}, "s.yaml")
    assert spec.search.storage.endswith("/optuna") and spec.run.storage == "s3://b/p"


def test_hide_secret():
    assert places.hide_secret("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert places.hide_secret("http://h:5000") == "http://h:5000"


def test_defaults_live_in_the_run_dir(tmp_path):
    p = places.resolve_places(tmp_path, None, None, None)
    assert p.storage == str(tmp_path.resolve() / "ray")
    assert p.optuna_url == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    assert p.train_storage("s1") == f"{tmp_path.resolve()}/ray/s1/train"
    assert len(p.local_parts()) == 3
    remote = places.resolve_places(tmp_path, "s3://b/x/", "postgresql://u@h/db", "http://m:5000")
    assert remote.spec_copy("s1") == "s3://b/x/s1/afsweep_spec.yaml" and remote.local_parts() == []


def test_a_refused_postgresql_url_is_one_line_without_the_password():
    port = _closed_port()
    with pytest.raises(PlaceError) as e:
        places.check_optuna_storage(f"postgresql://afsweep:topsecret@127.0.0.1:{port}/optuna")
    msg = str(e.value)
    assert msg.startswith(f"search.storage postgresql://afsweep:***@127.0.0.1:{port}/optuna: not usable")
    assert "topsecret" not in msg and "\n" not in msg


@pytest.mark.s3
def test_storage_checks_against_a_real_s3_server(s3_env, monkeypatch):
    places.check_storage(s3_env.prefix("ok"))  # writes and removes a probe
    places.write_text(s3_env.prefix("t") + "/a/b.yaml", "x: 1")
    with pytest.raises(PlaceError, match=r"^run.storage s3://no-such-bucket-[0-9a-f]+/p: not usable"):
        places.check_storage("s3://no-such-bucket-0a1b/p")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(PlaceError) as e:
        places.check_storage(s3_env.prefix("badkey"))
    assert "wrong-secret" not in str(e.value) and str(e.value).startswith("run.storage s3://")


@pytest.mark.s3
def test_credentials_leave_the_environment_for_a_private_file(s3_env, monkeypatch):
    from alphaflow.data import storage

    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    path = places.credentials_out_of_ray_env()
    try:
        assert path and "AWS_SECRET_ACCESS_KEY" not in os.environ and "AWS_ACCESS_KEY_ID" not in os.environ
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        # boto3 (our data reader) and pyarrow (Ray's storage) both still reach the bucket through the file
        storage.s3_client().head_bucket(Bucket=s3_env.bucket)
        places.check_storage(s3_env.prefix("after-move"))
    finally:
        monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
        storage.reset_clients()


def test_launch_refuses_an_unusable_optuna_storage_before_any_trial(tmp_path, fashion_manifest):
    spec = tmp_path / "s.yaml"
    port = _closed_port()
    spec.write_text(f"name: bad-store\ndata: {{manifest: {fashion_manifest}}}\n"
                    f"search: {{storage: 'postgresql://afsweep@127.0.0.1:{port}/optuna'}}\n")
    proc = subprocess.run(CLI + ["launch", str(spec), "--run-dir", str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PGPASSWORD": "pw-not-shown"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("afsweep: error:")]
    assert len(lines) == 1 and f"search.storage postgresql://afsweep@127.0.0.1:{port}/optuna" in lines[0], lines
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing was written to MLflow


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
