"""A sweep launched as its own process for the fault tests: start it, watch its trial's steps in MLflow, end it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "orchestrator.cli"]


def launch(tmp_path: Path, spec_text: str, env: dict | None = None, args: tuple[str, ...] = ()):
    """`afsweep launch` of spec_text with --run-dir tmp_path/runs, in its own process group: (proc, log path)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    log_path = tmp_path / "launch.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(CLI + ["launch", str(spec), "--run-dir", str(tmp_path / "runs"), *args],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    return proc, log_path


def wait(proc, timeout: float) -> None:
    """Wait for the sweep; past the timeout its whole process group is killed."""
    try:
        proc.wait(timeout=max(1.0, timeout))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def trial_runs(client, experiment: str = "afsweep") -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'trial'") if exp else []


def wait_for_step(proc, log_path: Path, client_of, step: int, deadline: float, ready=lambda: True):
    """Poll until the sweep's first trial has logged its loss at `step` or later (and `ready()` holds): returns
    that step, or None if the sweep ended or the deadline passed first. client_of() makes the MLflow client; it is
    called only once the launch has created the store (no race with its migrations)."""
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        if "MLflow parent run" not in log_path.read_text():
            continue
        client = client_of()
        runs = trial_runs(client)
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] if runs else []
        if steps and max(steps) >= step and ready():
            return max(steps)
    return None
