"""The confirmation stage for real: a sweep (base setting + one searched trial) whose driver is SIGKILLed while the
confirmation runs train; `afsweep resume` finishes it with every (configuration, seed) run once, the winner
registered with its interval, `afsweep best` ranking by the confirmed means and `afsweep status` showing the stage.
Ray Tune/Train, Optuna (sqlite), MLflow (sqlite) and the CLI in subprocesses."""

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

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "orchestrator.cli"]

SPEC = """
name: confirm
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: 20, batch_size: 32, model.size: micro, alpha.k_e: 0.5}}
train: {{workers: 1, eval_every: 10, log_every: 5, eval_samples: 100}}
search:
  num_trials: 2            # the base setting, then one searched trial
  max_concurrent: 1
  seed: 5
  space:
    optim.lr: {{type: loguniform, low: 1.0e-3, high: 3.0e-3}}
  early_stopping: {{scheduler: none}}
  confirm: {{top: 1, seeds: 2, eval_samples: 100}}
"""


def _cli(args, timeout=900):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def _runs(run_dir: Path, sweep: str, kind: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("afsweep")
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], f"tags.`afsweep.kind` = '{kind}' and "
                                      f"tags.`afsweep.sweep` = '{sweep}'")


def test_a_driver_killed_during_confirmation_is_finished_by_resume(tmp_path, fashion_manifest):
    run_dir = tmp_path / "runs"
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(manifest=fashion_manifest))
    log_path = tmp_path / "launch.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen(CLI + ["launch", str(spec), "--run-dir", str(run_dir)], stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "AFSWEEP_HEARTBEAT_S": "2"})
    sweep, done_before = None, None
    deadline = time.time() + 900
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(2)
            if sweep is None:
                m = re.search(r"afsweep: sweep (\S+):", log_path.read_text())
                sweep = m.group(1) if m else None
                continue
            _, runs = _runs(run_dir, sweep, "confirm")
            done = [r for r in runs if r.data.tags.get("afsweep.status") == "completed"]
            training = [r for r in runs if r not in done and r.data.metrics.get("step", 0) >= 5]
            if done and training:   # a confirmation run finished, the next one trains: kill the driver now
                done_before = {r.info.run_id: r.data.tags["afsweep.seed"] for r in done}
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None and done_before is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], capture_output=True)
    assert done_before, "never reached the confirmation stage: " + log_path.read_text()[-3000:]
    assert "afsweep: confirmation:" in log_path.read_text()

    res = _cli(["resume", sweep, "--run-dir", run_dir])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "confirmation: 2 fresh seeds each (paired)" in out, out[-3000:]
    assert "confirmed winner: " in out and "registered models:/afsweep-fashion-mnist" in out, out[-3000:]

    # every (configuration, seed) once, completed, re-scored; the run done before the kill was not run again
    client, runs = _runs(run_dir, sweep, "confirm")
    pairs = sorted((r.data.tags["afsweep.confirms"] == "base", r.data.tags["afsweep.seed"]) for r in runs)
    assert len(runs) == 4 and len(set(pairs)) == 4, pairs
    assert {p[1] for p in pairs if p[0]} == {p[1] for p in pairs if not p[0]}   # the same seeds for both
    for r in runs:
        assert r.data.tags["afsweep.status"] == "completed" and r.info.status == "FINISHED"
        m = r.data.metrics
        assert m["fid1_rescored"] > 0 and m["fid1_rescored_se"] > 0
        assert m["fid1_rescored"] != m["fid1_best"]    # other noise than the evaluations that picked it
        if r.info.run_id in done_before:
            steps = [h.step for h in client.get_metric_history(r.info.run_id, "fid1")]
            assert sorted(steps) == sorted(set(steps)) == [0, 10, 20], steps

    # the summary: two configurations with n = 2, the winner registered with its numbers
    exp = client.get_experiment_by_name("afsweep")
    parent = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'sweep'")[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["afsweep.stage"] == "done"
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "confirmation.json",
                                                        str(tmp_path))).read_text())
    assert [c["n"] for c in summary["configurations"]] == [2, 2]
    assert summary["configurations"][-1]["of"] == "base" and summary["configurations"][0]["gain"] is not None
    winner = next(c for c in summary["configurations"] if c["of"] == summary["winner"])
    assert winner["mean"] == pytest.approx(sum(winner["scores"].values()) / 2)
    mv = client.get_model_version_by_alias("afsweep-fashion-mnist", "best-fid1")
    assert float(mv.tags["afsweep.confirmed_mean"]) == pytest.approx(winner["mean"], rel=1e-5)
    assert float(mv.tags["afsweep.confirmed_n"]) == 2 and "confirmed winner" in mv.description
    assert mv.run_id in winner["run_ids"].values()

    best = _cli(["best", "--json", "--run-dir", run_dir], timeout=300)
    assert best.returncode == 0, best.stderr
    rows = json.loads(best.stdout)
    assert [r["of"] for r in rows][-1] == "base" and sum(r["winner"] for r in rows) == 1
    assert rows[0]["mean"] == pytest.approx(min(r["mean"] for r in rows[:-1]))

    status = _cli(["status", sweep, "--run-dir", run_dir], timeout=300).stdout
    assert "stage: done; confirmation runs: 4 of 4 completed, 4 started" in status, status
