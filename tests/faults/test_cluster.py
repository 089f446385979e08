"""A sweep on a real multi-node Ray cluster with the lab stack: shared storage in S3, the Optuna study and the
MLflow backend store in PostgreSQL, artifacts in S3 through the MLflow server (infra/mlflow/server.sh).

Two `ray start` nodes on this machine (own raylet, object store, --num-cpus, a custom resource each). One trial
with two workers spread over both; mid-trial the second node's raylet and every process it started are SIGKILLed.
The trial must finish from its last checkpoint on the head, keep its one MLflow run, and log no step twice. While
the second trial trains the driver is SIGKILLed; `afsweep resume` from another run dir, given only the storage URL,
finishes the sweep. Then: what the REST API of the tracking server shows, and no secret in any file the run or Ray
left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.fault_table import record, trial_figures
from tests.support.servers import BIN, mlflow_lab_server, postgres_server, ray_cluster

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.faults]

CLI = [sys.executable, "-m", "orchestrator.cli"]

SPEC = """
name: cluster
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: 90, batch_size: 32, model.size: micro, alpha.k_e: 0.5}}
train: {{workers: 2, placement: SPREAD, eval_every: 45, log_every: 5, eval_samples: 200, checkpoint_every: 10,
         max_failures: 2}}
search: {{num_trials: 2, max_concurrent: 1, storage: "{optuna}", early_stopping: {{scheduler: none}}}}
tracking: {{uri: "{tracking}"}}
run: {{storage: "{storage}"}}
"""


def _rest(uri: str, endpoint: str, **query) -> dict:
    url = f"{uri}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _rest_post(uri: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _ray_list(kind: str, address: str, *filters: str) -> list[dict]:
    cmd = [str(BIN / "ray"), "list", kind, "--address", address, "--format", "json", "--limit", "10000", "--detail"]
    for f in filters:
        cmd += ["--filter", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "token"})
    start = out.stdout.find("[")  # no match prints a notice instead of a list
    if out.returncode != 0 or start < 0:
        return []
    return json.loads(out.stdout[start:])


def _trial_runs(uri: str, experiment_id: str) -> list[dict]:
    found = _rest_post(uri, "runs/search", {"experiment_ids": [experiment_id],
                                           "filter": "tags.`afsweep.kind` = 'trial'"})
    return found.get("runs", [])


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    hist = _rest(uri, "metrics/get-history", run_id=run_id, metric_key=key, max_results=25000)
    return [int(m["step"]) for m in hist.get("metrics", [])]


def _files_holding(root: Path, secrets: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                data = p.read_bytes()
            except OSError:
                continue
            hits += [f"{p}: {s[:4]}..." for s in secrets if s.encode() in data]
    return hits


NETNS_VAR = "AFSWEEP_IN_NETNS"
ROOT = Path(__file__).resolve().parents[2]


def _private_network_available() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def test_a_two_node_sweep_on_the_lab_stack_survives_a_lost_node(tmp_path, request):
    """Run in a network namespace whose only interface is loopback when the machine allows it (root, unshare):
    with several nodes Ray 2.60 binds its gRPC servers to every interface, and there every interface is loopback,
    so nothing the test starts is reachable from outside the machine."""
    if os.environ.get(NETNS_VAR) != "1" and _private_network_available():
        inner = subprocess.run(
            ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -m pytest -q -s -p no:cacheprovider "$1"',
             sys.executable, f"{Path(__file__).relative_to(ROOT)}::{request.node.name}"],
            capture_output=True, text=True, timeout=1800, cwd=ROOT, env={**os.environ, NETNS_VAR: "1"})
        assert inner.returncode == 0, inner.stdout[-6000:] + inner.stderr[-2000:]
        print(inner.stdout[-600:])
        return
    if os.environ.get(NETNS_VAR) == "1":
        assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
    _two_node_sweep(tmp_path, request.getfixturevalue("s3_server"))


def _two_node_sweep(tmp_path: Path, s3_server) -> None:
    from alphaflow.data import prepare_builtin, storage

    s3 = s3_server.env()
    tag = uuid.uuid4().hex[:8]
    saved = {k: os.environ.get(k) for k in s3}
    os.environ.update(s3)
    storage.reset_clients()
    try:
        manifest = prepare_builtin("digits", f"s3://{s3_server.bucket}/cluster-data-{tag}")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        storage.reset_clients()

    t0 = time.time()
    with postgres_server() as pg, \
            mlflow_lab_server(tmp_path, pg, s3, f"s3://{s3_server.bucket}/mlflow-{tag}") as (uri, _), \
            ray_cluster(tmp_path, [("head", 3), ("b", 2)], env=s3) as cluster:
        # a PostgreSQL that refuses the password: one line naming the URL, never the password
        from orchestrator.platform.places import PlaceError, check_optuna_storage

        os.environ["PGPASSWORD"] = "not-the-password"
        try:
            with pytest.raises(PlaceError, match=r"^search.storage postgresql://afsweep@127.0.0.1:\d+/optuna: "
                                                 r"not usable: .*password authentication failed"):
                check_optuna_storage(f"{pg.base_url}/optuna")
        finally:
            del os.environ["PGPASSWORD"]

        # the run dir's local defaults cannot serve two nodes: refused before anything is written, saying what to set
        local = tmp_path / "local.yaml"
        local.write_text(f"name: local\ndata: {{manifest: {manifest}}}\n")
        refused = subprocess.run(CLI + ["launch", str(local), "--run-dir", str(tmp_path / "local-runs"), "--address",
                                        cluster.address], capture_output=True, text=True, timeout=300,
                                 env={**os.environ, **s3}, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "a cluster of 2 nodes cannot reach this machine's local run.storage" in refused.stderr
        assert "set run.storage" in refused.stderr

        spec = tmp_path / "cluster.yaml"
        spec.write_text(SPEC.format(manifest=manifest, optuna=f"{pg.base_url}/optuna", tracking=uri,
                                    storage=f"s3://{s3_server.bucket}/runs-{tag}"))
        env = {**os.environ, **s3, "PGPASSWORD": pg.password}
        env.pop("MLFLOW_TRACKING_URI", None)
        log_path = tmp_path / "launch.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(CLI + ["launch", str(spec), "--run-dir", str(tmp_path / "runs"),
                                           "--address", cluster.address], stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, cwd=tmp_path)
        head, node_b = cluster.nodes
        node_ids = {n["node_id"]: n for n in _ray_list("nodes", cluster.address)}
        b_id = next(i for i, n in node_ids.items() if "node_b" in (n.get("resources_total") or {}))
        placement, node_lost_ms, driver_killed_ms, sweep = set(), None, None, None
        deadline = time.time() + 900
        try:
            while time.time() < deadline and proc.poll() is None and driver_killed_ms is None:
                time.sleep(2)
                text = log_path.read_text()
                if "MLflow parent run" not in text:
                    continue
                sweep = sweep or re.search(r"afsweep: sweep (\S+):", text).group(1)
                exp = _rest(uri, "experiments/get-by-name", experiment_name="afsweep")["experiment"]
                runs = sorted(_trial_runs(uri, exp["experiment_id"]), key=lambda r: r["info"]["start_time"])
                if node_lost_ms is None:  # fault 1: the node with one of the first trial's workers is lost
                    workers = _ray_list("actors", cluster.address, "class_name=RayTrainWorker", "state=ALIVE")
                    placement |= {w["node_id"] for w in workers}
                    if runs and len({w["node_id"] for w in workers}) == 2:
                        steps = _steps(uri, runs[0]["info"]["run_id"], "loss")
                        if steps and max(steps) >= 25:
                            node_lost_ms = time.time() * 1000
                            cluster.kill_node(node_b)
                elif len(runs) == 2 and _steps(uri, runs[1]["info"]["run_id"], "loss"):
                    # fault 2: the driver is SIGKILLed while the second trial trains (the cluster lives on)
                    if max(_steps(uri, runs[1]["info"]["run_id"], "loss")) >= 10:
                        driver_killed_ms = time.time() * 1000
                        os.killpg(proc.pid, 9)
            proc.wait(timeout=max(1, deadline - time.time()))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        out = log_path.read_text()
        assert node_lost_ms, "never saw the trial's two workers on two nodes: " + out[-3000:]
        assert b_id in placement and len(placement) == 2, (placement, node_ids)
        assert driver_killed_ms, "the second trial never trained: " + out[-3000:]

        # resume from "another machine": a fresh run dir, only the storage URL (the frozen spec names the rest)
        resumed = subprocess.run(CLI + ["resume", sweep, "--storage", f"s3://{s3_server.bucket}/runs-{tag}",
                                        "--run-dir", str(tmp_path / "elsewhere"), "--address", cluster.address],
                                 capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
        out = resumed.stdout + resumed.stderr
        wall = time.time() - t0
        assert resumed.returncode == 0, out[-4000:]
        assert "2 trials: 2 completed" in out, out[-3000:]
        after = _ray_list("actors", cluster.address, "class_name=RayTrainWorker")
        finished_on = {a["node_id"] for a in after if a.get("state") == "DEAD" and a["node_id"] != b_id}
        assert finished_on, after

        # what the tracking server holds, through its REST API
        exp = _rest(uri, "experiments/get-by-name", experiment_name="afsweep")["experiment"]
        runs = sorted(_trial_runs(uri, exp["experiment_id"]), key=lambda r: r["info"]["start_time"])
        assert len(runs) == 2, "each restarted trial keeps its one MLflow run"
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        for run, fault, fault_ms in zip(runs, ("worker node lost (its raylet and processes SIGKILLed)",
                                               "driver SIGKILLed, then afsweep resume from another run dir"),
                                        (node_lost_ms, driver_killed_ms)):
            tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
            assert tags["afsweep.status"] == "completed" and run["info"]["status"] == "FINISHED"
            for key in ("loss", "fid1", "wall_s"):
                steps = _steps(uri, run["info"]["run_id"], key)
                assert len(steps) == len(set(steps)) and max(steps) == 90, (key, sorted(steps))
            fig = trial_figures(client, run["info"]["run_id"], fault_ms)
            # the checkpoint before the last at worst (Ray Train registers a report when its controller polls)
            assert fig["steps_redone"] <= 2 * 10 + 5, fig
            record(fault + " (S3 storage, PostgreSQL, MLflow server)", "2 / 2", fig["steps_redone"], 0, 0,
                   fig["samples_skipped"], fig["seconds_added"], wall_s=wall)
        run = runs[0]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        parent = _rest(uri, "runs/get", run_id=tags["mlflow.parentRunId"])["run"]
        assert parent["info"]["status"] == "FINISHED"
        arts = _rest(uri, "artifacts/list", run_id=run["info"]["run_id"], path="images")
        assert any(f["path"].startswith("images/samples_nfe1+step+") and f["path"].endswith(".png")
                   for f in arts.get("files", [])), arts
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:"), run["info"]["artifact_uri"]
        best = min(runs, key=lambda r: {m["key"]: m["value"] for m in r["data"]["metrics"]}["fid1_best"])
        alias = _rest(uri, "registered-models/alias", name="afsweep-digits", alias="best-fid1")["model_version"]
        assert alias["run_id"] == best["info"]["run_id"]

        # a client with no S3 credentials loads the registered model through the server
        loader = subprocess.run(
            [sys.executable, "-c", "import mlflow, sys; mlflow.set_tracking_uri(sys.argv[1]); "
             "m = mlflow.pyfunc.load_model('models:/afsweep-digits@best-fid1'); print(type(m).__name__)", uri],
            capture_output=True, text=True, timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
        assert loader.returncode == 0, loader.stderr[-2000:]

        # status from "another machine": only the tracking URL
        status = subprocess.run(CLI + ["status", "--tracking-uri", uri, "--run-dir", str(tmp_path / "elsewhere")],
                                capture_output=True, text=True, timeout=300, env=env)
        assert status.returncode == 0 and "2 completed" in status.stdout, status.stdout + status.stderr

        secrets = [s3_server.secret_key, pg.password]
        assert not _files_holding(cluster.session_root, secrets), _files_holding(cluster.session_root, secrets)
        assert not _files_holding(tmp_path, secrets), _files_holding(tmp_path, secrets)
        assert not any(s in status.stdout + out for s in secrets)
    print(f"cluster test: workers ran on {len(placement)} nodes before node b was lost; {wall:.0f} s; network "
          f"interfaces: {[name for _, name in socket.if_nameindex()]}")
