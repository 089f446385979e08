"""Real servers for tests, on loopback: an MLflow tracking server and a Ray head node. Each is started as its own
process group and stopped (with everything it spawned) when the test is done."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
LOOPBACK_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def mlflow_server(root: Path):
    """`mlflow server` over a sqlite backend store with proxied artifacts; yields its http:// URI."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # else 7 job workers, ~1.9 GB
    log = open(root / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{uri}/health", proc, timeout=90)
        yield uri
    finally:
        _stop(proc)
        log.close()


@contextmanager
def ray_head(root: Path, num_cpus: int = 6):
    """`ray start --head` on loopback (its own temp dir); yields the GCS address for `--address`."""
    port = free_port()
    dash = free_port()
    temp = Path("/tmp") / f"afsweep-ray-{port}"  # Ray's socket paths must stay short
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", str(num_cpus), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--temp-dir", str(temp), "--disable-usage-stats"]
    # Ray rewrites a loopback address to the machine's own IP when a driver connects; this variable (meant for
    # single-machine clusters) keeps it on loopback, where the head listens. It is set for this test's processes.
    saved = os.environ.get(LOOPBACK_VAR)
    os.environ[LOOPBACK_VAR] = "0"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"ray start failed: {out.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)
        if saved is None:
            os.environ.pop(LOOPBACK_VAR, None)
        else:
            os.environ[LOOPBACK_VAR] = saved
