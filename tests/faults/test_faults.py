"""Faults caused for real, and what survives them (each test records its figures for benchmarks/faults.py).

- One Ray Train worker process SIGKILLed mid-trial: the worker group restarts from its latest checkpoint
  (`train.max_failures`, `train.checkpoint_every`), the trial completes, it keeps its one MLflow child run, and no
  metric step is logged twice.
- The MLflow server stopped for 30 s mid-trial: the trial waits for it (tracking.through_outages) and completes;
  every log step is in MLflow exactly once. The same trial reads data with corrupt samples (on_corrupt: skip):
  each skipped sample is counted in the metric samples_skipped.
- A non-finite loss: tests/e2e/test_sweep.py (the trial fails once, not restarted).
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.fault_table import record, trial_figures
from tests.support.sweep_proc import launch, trial_runs, wait, wait_for_step

pytestmark = [pytest.mark.slow, pytest.mark.faults]

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


def _client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")


def test_a_killed_train_worker_restarts_from_its_checkpoint(tmp_path, fashion_manifest):
    run_dir = tmp_path / "runs"
    t0 = time.time()
    proc, log = launch(tmp_path, SPEC.format(manifest=fashion_manifest))
    deadline = time.time() + 600
    killed, killed_ms = None, None
    try:
        at = wait_for_step(proc, log, lambda: _client(run_dir), 25, deadline,
                           ready=lambda: len(train_worker_pids()) >= 2)
        if at is not None:
            pid = train_worker_pids()[-1]
            killed, killed_ms = (at, pid), time.time() * 1000
            os.kill(pid, signal.SIGKILL)  # one DDP rank, mid-trial
    finally:
        wait(proc, deadline - time.time())
    out = (tmp_path / "launch.log").read_text()
    assert killed, "never saw two Train workers training: " + out[-3000:]
    assert proc.returncode == 0, out[-4000:]
    assert re.search(r"1 trials: 1 completed", out), out[-3000:]

    client = _client(run_dir)
    runs = trial_runs(client)
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

    fig = trial_figures(client, run.info.run_id, killed_ms)
    # the checkpoint before the last one at worst: Ray Train registers a reported checkpoint when its controller
    # next polls the workers, and a group that dies before that resumes from the one before
    assert fig["steps_redone"] <= 2 * 10 + 5, fig
    assert len(client.get_metric_history(run.info.run_id, "restarts")) >= 1
    record("one Train worker SIGKILLed", "1 / 1", fig["steps_redone"], 0, 0, fig["samples_skipped"],
           fig["seconds_added"], wall_s=time.time() - t0)


OUTAGE_SPEC = """
name: mlflow-outage
data: {{manifest: {manifest}, on_corrupt: skip}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: 80, batch_size: 32, model.size: micro, alpha.k_e: 0.5}}
train: {{workers: 2, eval_every: 40, log_every: 5, eval_samples: 200, checkpoint_every: 10}}
search: {{num_trials: 1, max_concurrent: 1, early_stopping: {{scheduler: none}}}}
tracking: {{uri: "{uri}"}}
"""


def _copy_with_corrupt_samples(manifest: str, dest: Path) -> str:
    """The data set with every 50th sample of every shard overwritten in place (same size: the size check before
    the sweep passes it; only reading the sample finds it)."""
    import shutil

    shutil.copytree(Path(manifest).parent, dest)
    broken = 0
    for shard in sorted(dest.glob("shard-*.tar")):
        data = bytearray(shard.read_bytes())
        at, i = data.find(b"\x93NUMPY"), 0
        while at >= 0:
            if i % 50 == 49:
                data[at:at + 6] = b"BROKEN"
                broken += 1
            at, i = data.find(b"\x93NUMPY", at + 6), i + 1
        shard.write_bytes(bytes(data))
    assert broken > 100
    return str(dest / Path(manifest).name)


def test_the_mlflow_server_down_for_30_s_mid_trial_loses_nothing(tmp_path, fashion_manifest):
    """Two faults in one trial: the tracking server stops for 30 s, and the data holds corrupt samples
    (on_corrupt: skip): the trial completes, logs every step once, and counts every sample it skipped."""
    from mlflow.tracking import MlflowClient

    from tests.support.servers import free_port, start_mlflow, stop_server

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow(tmp_path, port)
    data = _copy_with_corrupt_samples(fashion_manifest, tmp_path / "data")
    t0 = time.time()
    proc, log = launch(tmp_path, OUTAGE_SPEC.format(manifest=data, uri=uri))
    client, stopped_ms, down_s = MlflowClient(tracking_uri=uri), None, 0.0
    try:
        deadline = time.time() + 600
        if wait_for_step(proc, log, lambda: client, 15, deadline) is not None:
            stopped_ms = time.time() * 1000
            stop_server(server)
            time.sleep(30)
            server = start_mlflow(tmp_path, port)
            down_s = time.time() - stopped_ms / 1000
        wait(proc, deadline - time.time())
        out = log.read_text()
        assert stopped_ms, "the trial never logged step 15: " + out[-3000:]
        assert proc.returncode == 0, out[-4000:]
        assert "1 trials: 1 completed" in out, out[-3000:]
        runs = trial_runs(client)
        assert len(runs) == 1 and runs[0].data.tags["afsweep.status"] == "completed"
        run_id = runs[0].info.run_id
        loss_steps = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert sorted(loss_steps) == list(range(5, 81, 5)), sorted(loss_steps)  # every log step, once
        assert sorted(m.step for m in client.get_metric_history(run_id, "fid1")) == [0, 40, 80]
        fig = trial_figures(client, run_id, stopped_ms)
        assert fig["samples_skipped"] >= 1, "the skipped samples must be counted"
        record("MLflow server stopped 30 s mid-trial (the trial waits)", "1 / 1", fig["steps_redone"], 0, 0,
               "-", fig["seconds_added"], down_s=round(down_s), wall_s=time.time() - t0)
        record("corrupt samples (same size), on_corrupt: skip (same trial)", "1 / 1", 0, 0, 0,
               f"{fig['samples_skipped']} (counted, metric samples_skipped)", "-", wall_s=time.time() - t0)
    finally:
        stop_server(server)
