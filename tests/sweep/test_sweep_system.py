"""The sweep system end to end, each against real services:
- a sweep on an existing Ray cluster (`ray start --head`, `--address`) tracked by a real `mlflow server` over HTTP,
  where ASHA stops a trial and that trial is PRUNED in the Optuna study; `afsweep best` and the registry over HTTP;
- SIGKILL the sweep driver mid-sweep; `afsweep resume` finishes it: every trial once in Ray, MLflow and Optuna.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import mlflow_server, ray_head

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "orchestrator.cli"]


def _cli(args, timeout=900, env=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _spec(tmp: Path, text: str) -> Path:
    p = tmp / "spec.yaml"
    p.write_text(text)
    return p


PRUNE_SPEC = """
name: prune
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: 40, batch_size: 32, model.size: micro, alpha.k_s: 0.0, alpha.k_e: 0.5}}
train: {{workers: 2, eval_every: 10, log_every: 5, eval_samples: 200}}
search:
  num_trials: 2
  max_concurrent: 1       # the good trial reaches the rung first, the bad one is compared with it
  include_base: false     # the two points are the whole sweep
  seed: 0
  points_to_evaluate:
    - {{optim.lr: 0.003}}
    - {{optim.lr: 1.0e-7}}   # learns nothing in 40 steps: ASHA must stop it
  space:
    optim.lr: {{type: loguniform, low: 1.0e-7, high: 1.0e-2}}
  early_stopping: {{scheduler: asha, reduction_factor: 2}}
tracking: {{uri: {uri}}}
"""


def test_asha_prunes_on_external_cluster_tracked_over_http(tmp_path, fashion_manifest):
    import mlflow
    import numpy as np
    import optuna
    import pandas as pd
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "runs"
    with mlflow_server(tmp_path) as uri, ray_head(tmp_path) as address:
        spec = _spec(tmp_path, PRUNE_SPEC.format(manifest=fashion_manifest, uri=uri))
        res = _cli(["launch", spec, "--run-dir", run_dir, "--address", address])
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "1 stopped early by ASHA" in res.stdout, res.stdout[-2000:]
        sweep = re.search(r"afsweep: sweep (\S+):", res.stdout).group(1)

        # Optuna: the stopped trial is PRUNED, not COMPLETE with a truncated score
        study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{run_dir / 'optuna.db'}")
        states = sorted(t.state.name for t in study.trials)
        assert states == ["COMPLETE", "PRUNED"], states
        pruned = [t for t in study.trials if t.state.name == "PRUNED"][0]
        assert pruned.params["optim.lr"] == pytest.approx(1e-7)

        # MLflow over HTTP: the pruned child run is tagged and FINISHED (it ran the budget ASHA gave it, as
        # designed); best and the registry answer
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        exp = client.get_experiment_by_name("afsweep")
        children = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'trial'")
        by_state = {r.data.tags["afsweep.status"]: r for r in children}
        assert set(by_state) == {"completed", "pruned"}
        pruned_run = by_state["pruned"]
        assert pruned_run.info.status == "FINISHED"
        assert int(pruned_run.data.tags["afsweep.stopped_at_step"]) < int(pruned_run.data.params["total_steps"])
        assert "Stopped early by ASHA" in pruned_run.data.tags["mlflow.note.content"]
        assert float(by_state["pruned"].data.params["optim.lr"]) == pytest.approx(1e-7)
        # one value per trial: what Optuna holds of each trial is the fid1_best MLflow has, stopped early or not
        for t in study.trials:
            run = by_state["pruned" if t.state.name == "PRUNED" else "completed"]
            assert t.value == pytest.approx(run.data.metrics["fid1_best"]), (t.state.name, t.value)
            assert 0 < run.data.metrics["fid1_best_se"] < run.data.metrics["fid1_best"]

        best = _cli(["best", "--metric", "fid1", "--json", "--tracking-uri", uri, "--run-dir", run_dir], timeout=300)
        assert best.returncode == 0, best.stderr
        row = json.loads(best.stdout)[0]
        assert row["run_id"] == by_state["completed"].info.run_id
        assert row["model_uri"] == "models:/afsweep-fashion-mnist@best-fid1"
        mv = client.get_model_version_by_alias("afsweep-fashion-mnist", "best-fid1")
        assert mv.run_id == row["run_id"]

        mlflow.set_tracking_uri(uri)
        gen = mlflow.pyfunc.load_model("models:/afsweep-fashion-mnist@best-fid1")
        images = np.asarray(gen.predict(pd.DataFrame({"class_label": [3, 4]}), params={"nfe": 1, "seed": 0}))
        assert images.shape == (2, 1, 28, 28) and images.dtype == np.uint8

        # --register moves an alias through the server too
        reg = _cli(["best", "--metric", "fid2", "--register", "candidate", "--tracking-uri", uri,
                    "--run-dir", run_dir], timeout=300)
        assert reg.returncode == 0, reg.stderr
        assert client.get_model_version_by_alias("afsweep-fashion-mnist", "candidate").version


RESUME_SPEC = """
name: resume
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: 60, batch_size: 32, model.size: micro, alpha.k_e: 0.5}}
train: {{workers: 2, eval_every: 20, log_every: 10, eval_samples: 200}}
search:
  num_trials: 2
  max_concurrent: 1
  seed: 5
  space:
    optim.lr: {{type: loguniform, low: 1.0e-3, high: 3.0e-3}}
  early_stopping: {{scheduler: none}}
"""


def _trial_runs(run_dir: Path, sweep: str):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("afsweep")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id],
                                      f"tags.`afsweep.kind` = 'trial' and tags.`afsweep.sweep` = '{sweep}'")


def test_resume_after_driver_sigkill(tmp_path, fashion_manifest):
    import optuna

    run_dir = tmp_path / "runs"
    spec = _spec(tmp_path, RESUME_SPEC.format(manifest=fashion_manifest))
    log = open(tmp_path / "launch.log", "w+")
    proc = subprocess.Popen(CLI + ["launch", str(spec), "--run-dir", str(run_dir)], stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "AFSWEEP_HEARTBEAT_S": "2"})
    sweep, killed_after = None, None
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(2)
            if sweep is None:
                m = re.search(r"afsweep: sweep (\S+):", (tmp_path / "launch.log").read_text())
                sweep = m.group(1) if m else None
                continue
            _, runs = _trial_runs(run_dir, sweep)
            done = [r for r in runs if r.data.tags.get("afsweep.status") == "completed"]
            running = [r for r in runs if r not in done and r.data.metrics.get("step", 0) >= 10]
            if done and running:  # one trial finished, the next one is training: kill the driver now
                killed_after = {r.data.tags["afsweep.trial_id"] for r in done}
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started, like a lost node
                killed_at = time.time() * 1000
                break
    finally:
        if proc.poll() is None and killed_after is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    assert killed_after, "the sweep never reached a completed trial: " + (tmp_path / "launch.log").read_text()[-3000:]

    # the dead driver's sweep is not "RUNNING": it missed its heartbeats
    status = ""
    for _ in range(15):
        time.sleep(2)
        status = _cli(["status", sweep, "--run-dir", run_dir]).stdout
        if "INTERRUPTED" in status:
            break
    assert f"sweep {sweep}: INTERRUPTED" in status, status

    res = _cli(["resume", sweep, "--run-dir", run_dir])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    client, runs = _trial_runs(run_dir, sweep)
    trial_ids = [r.data.tags["afsweep.trial_id"] for r in runs]
    assert len(trial_ids) == 2 and len(set(trial_ids)) == 2, trial_ids  # no trial lost, no duplicate child run
    assert all(r.data.tags.get("afsweep.status") == "completed" for r in runs)
    for r in runs:  # the trial that had finished before the kill was not run again
        if r.data.tags["afsweep.trial_id"] in killed_after:
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "fid1")]
            assert sorted(steps) == sorted(set(steps)) == [0, 20, 40, 60], steps
        else:  # the trial interrupted by the kill: its cost totals go on from what it had spent before
            walls = client.get_metric_history(r.info.run_id, "wall_s")
            before = [m.value for m in walls if m.timestamp < killed_at]
            after = [m.value for m in walls if m.timestamp > killed_at]
            if before:
                assert after and min(after) >= max(before), (before, after)
                assert r.data.metrics["wall_s"] > max(before)
    from ray import tune

    from orchestrator.trial.trainable import run_trial

    grid = tune.Tuner.restore(str(run_dir / "ray" / sweep), trainable=run_trial).get_results()
    assert len(grid) == 2 and all(r.error is None for r in grid)  # Ray: every trial once, none failed
    study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{run_dir / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    # a trial started after the dead driver's last snapshot is marked FAIL (never a phantom RUNNING); the base
    # trial (the first) ran once and is no point of the study
    assert states.count("COMPLETE") == 1 and set(states) <= {"COMPLETE", "FAIL"}, states
    assert sorted(r.data.tags["afsweep.role"] for r in runs) == ["base", "search"]
    parent = client.search_runs([runs[0].info.experiment_id], "tags.`afsweep.kind` = 'sweep'")[0]
    assert parent.info.status == "FINISHED"
