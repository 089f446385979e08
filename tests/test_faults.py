"""Faults caused for real, and what survives them.

- One Ray Train worker process SIGKILLed mid-trial: the worker group restarts from its latest checkpoint
  (`train.max_failures`, `train.checkpoint_every`), the trial completes, it keeps its one MLflow child run, and no
  metric step is logged twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "orchestrator.cli"]

SPEC = """
name: worker-kill
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: 80, batch_size: 32, model.size: micro, alpha.k_e: 0.5}}
train: {{workers: 2, eval_every: 40, log_every: 5, eval_samples: 200, checkpoint_every: 10, max_failures: 2}}
search: {{num_trials: 1, max_concurrent: 1, early_stopping: {{scheduler: none}}}}
"""


def train_worker_pids() -> list[int]:
    """Processes of Ray Train workers (their titles name the actor class)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "RayTrainWorker" in cmd:
            pids.append(int(d.name))
    return sorted(pids)


def _trial_run(run_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("afsweep") if (run_dir / "mlflow.db").exists() else None
    runs = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'trial'") if exp else []
    return client, runs


def test_a_killed_train_worker_restarts_from_its_checkpoint(tmp_path, fashion_manifest):
    run_dir = tmp_path / "runs"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(manifest=fashion_manifest))
    log = open(tmp_path / "launch.log", "w+")
    proc = subprocess.Popen(CLI + ["launch", str(spec), "--run-dir", str(run_dir)], stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None and killed is None:
            time.sleep(1)
            if "MLflow parent run" not in (tmp_path / "launch.log").read_text():
                continue  # the store is being created: do not race its migrations
            client, runs = _trial_run(run_dir)
            if runs:
                steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
                pids = train_worker_pids()
                if steps and max(steps) >= 25 and len(pids) >= 2:
                    killed = (max(steps), pids[-1])
                    os.kill(pids[-1], signal.SIGKILL)  # one DDP rank, mid-trial
        proc.wait(timeout=max(1, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = (tmp_path / "launch.log").read_text()
    assert killed, "never saw two Train workers training: " + out[-3000:]
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"1 trials: 1 completed", out), out[-3000:]

    client, runs = _trial_run(run_dir)
    assert len(runs) == 1, "the restarted trial must keep its one MLflow run"
    run = runs[0]
    assert run.data.tags["afsweep.status"] == "completed" and run.info.status == "FINISHED"
    for key in ("loss", "wall_s", "fid1"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at a step: {sorted(steps)}"
        assert max(steps) == 80, (key, sorted(steps))
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "fid1")) == [0, 40, 80]
    walls = sorted(client.get_metric_history(run.info.run_id, "wall_s"), key=lambda m: m.step)
    assert all(a.value <= b.value for a, b in zip(walls, walls[1:])), "cost went backwards across the restart"
