"""Real servers for tests, on loopback: an MLflow tracking server (sqlite, or the lab stack of infra/: PostgreSQL
and S3 through infra/mlflow/server.sh), PostgreSQL (infra/postgres/start.sh), a Ray head node and a cluster of
several `ray start` nodes. Each is started as its own process group and stopped (with everything it spawned) when
the test is done."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
INFRA = Path(__file__).resolve().parents[2] / "infra"
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


def start_mlflow(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` over a sqlite backend store with proxied artifacts, answering on `port` (a restart on the
    same port and store is the same server again)."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # else 7 job workers, ~1.9 GB
    log = open(root / "mlflow-server.log", "a")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    log.close()
    _wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=90)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    _stop(proc)


@contextmanager
def mlflow_server(root: Path):
    """`mlflow server` over a sqlite backend store with proxied artifacts; yields its http:// URI."""
    port = free_port()
    proc = start_mlflow(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


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


@dataclass
class Postgres:
    base_url: str      # postgresql://afsweep@127.0.0.1:PORT (append /mlflow or /optuna)
    password: str      # what clients read from PGPASSWORD
    data_dir: Path


@contextmanager
def postgres_server():
    """PostgreSQL on loopback through infra/postgres/start.sh (a temporary data dir under /tmp: the server runs as
    the unprivileged `postgres` user, which cannot enter pytest's root-only folders)."""
    import tempfile
    import uuid

    data = Path(tempfile.mkdtemp(prefix="afsweep-pg-"))
    password = "pg-" + uuid.uuid4().hex[:12]
    env = {**os.environ, "PGPASSWORD": password}
    out = subprocess.run([str(INFRA / "postgres" / "start.sh"), str(data), str(free_port())], env=env,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"infra/postgres/start.sh failed: {out.stderr[-2000:]}")
    try:
        yield Postgres(out.stdout.strip().splitlines()[-1], password, data)
    finally:
        subprocess.run([str(INFRA / "postgres" / "stop.sh"), str(data)], capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", str(data)], capture_output=True)


@contextmanager
def mlflow_lab_server(root: Path, pg: Postgres, s3_env: dict[str, str], artifacts: str):
    """infra/mlflow/server.sh: the PostgreSQL backend store, artifacts in S3 served through the server."""
    port = free_port()
    env = {**os.environ, **s3_env, "PGPASSWORD": pg.password, "MLFLOW_BACKEND_URI": f"{pg.base_url}/mlflow",
           "MLFLOW_ARTIFACTS_URI": artifacts, "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "1",
           "MLFLOW_BIN": str(BIN / "mlflow"), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    log = open(root / "mlflow-lab-server.log", "w")
    proc = subprocess.Popen([str(INFRA / "mlflow" / "server.sh")], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{uri}/health", proc, timeout=120)
        yield uri, proc
    finally:
        _stop(proc)
        log.close()


@dataclass
class RayNode:
    name: str
    resource: str      # a custom resource only this node has: placement is checkable
    num_cpus: int
    raylet_pid: int | None = None


# The nodes of a one-machine cluster advertise 127.0.0.2: a loopback address Ray does not rewrite to the machine's
# network address (it rewrites 127.0.0.1 as soon as multi-node clustering is on). Ray 2.60 still binds its gRPC
# servers to every interface in that mode (no setting changes it): the one-node recipe (ray_head) is the one that
# binds loopback only.
NODE_IP = "127.0.0.2"


@dataclass
class RayCluster:
    address: str       # the GCS address, for --address
    dashboard: str     # http://127.0.0.1:PORT
    nodes: list[RayNode]
    session_root: Path

    def kill_node(self, node: RayNode) -> list[int]:
        """SIGKILL a node's raylet and every process it started (its workers, its agents): a lost machine."""
        pids = [*_descendants(node.raylet_pid), node.raylet_pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


def _descendants(pid: int) -> list[int]:
    table = _proc_table()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (pp, _) in table.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _new_raylet(known: set[int]) -> int | None:
    """The raylet that the last `ray start` added: the one not known yet (a node's custom resource is not on its
    raylet's command line, so the pid is how nodes are told apart)."""
    for pid, (_, cmd) in _proc_table().items():
        if cmd.split(" ")[0].endswith("/raylet") and pid not in known:
            return pid
    return None


@contextmanager
def ray_cluster(root: Path, nodes: list[tuple[str, int]], env: dict[str, str] | None = None):
    """A head and more nodes on this machine, each its own `ray start` (raylet, object store, --num-cpus) with a
    custom resource `node_<name>`; `env` is every node's own environment (its credential chain)."""
    port, dash = free_port(), free_port()
    temp = Path("/tmp") / f"afsweep-rc-{port}"  # Ray's socket paths must stay short
    node_env = {**os.environ, **(env or {})}
    node_env.pop(LOOPBACK_VAR, None)
    started: list[RayNode] = []
    try:
        for i, (name, cpus) in enumerate(nodes):
            node = RayNode(name, f"node_{name}", cpus)
            common = ["--node-ip-address", NODE_IP, "--num-cpus", str(cpus), "--disable-usage-stats",
                      "--resources", json.dumps({node.resource: cpus})]
            if i == 0:
                cmd = [str(BIN / "ray"), "start", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                       "--dashboard-port", str(dash), "--temp-dir", str(temp), *common]
            else:  # a joining node must speak the head's token authentication
                cmd = [str(BIN / "ray"), "start", "--address", f"{NODE_IP}:{port}", *common]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                                 env={**node_env, "RAY_AUTH_MODE": "token"} if i else node_env)
            if out.returncode != 0:
                raise RuntimeError(f"ray start ({name}) failed: {out.stderr[-2000:]}")
            node.raylet_pid = _new_raylet({n.raylet_pid for n in started})
            started.append(node)
        yield RayCluster(f"{NODE_IP}:{port}", f"http://127.0.0.1:{dash}", started, temp)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120, env=node_env)
