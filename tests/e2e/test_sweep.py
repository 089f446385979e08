"""End to end: `afsweep launch` runs a real sweep (Ray Tune + Optuna + ASHA, Ray Train with 2 gloo workers per
trial, MLflow on sqlite), then `afsweep best` reads it back and the registered model generates images."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from tests.support.fault_table import record

pytestmark = pytest.mark.slow

SPEC = """
name: e2e
data: {dataset: fashion-mnist}
base:
  preset: tiny-cpu
  overrides: {total_steps: 30, batch_size: 32, model.size: micro, ema.extra_half_lives: [10]}
train: {workers: 2, eval_every: 15, log_every: 5, eval_samples: 200, eval_nstep: 4}
search:
  num_trials: 2
  max_concurrent: 2
  seed: 3
  space:
    alpha.k_e: {type: uniform, low: 0.3, high: 0.5}
    optim.lr: {type: loguniform, low: 1.0e-3, high: 3.0e-3}
  early_stopping: {scheduler: asha, reduction_factor: 2}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    run_dir = root / "runs"
    mp = pytest.MonkeyPatch()
    mp.setenv("AFSWEEP_SYSTEM_METRICS_S", "2")   # trials of seconds: sample the system often enough to see it
    try:
        res = CliRunner().invoke(main, ["launch", str(spec), "--run-dir", str(run_dir)], catch_exceptions=False)
    finally:
        mp.undo()
    return res, run_dir


def _client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def test_launch_succeeds_and_reports(sweep):
    res, run_dir = sweep
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Ray dashboard: http://127.0.0.1:" in out
    assert "best trial:" in out and "fid1 =" in out
    assert "untrained model: fid1 =" in out
    # the base setting ran as the first trial, and the best is measured against it, each with its evaluation error
    assert "afsweep: the first trial runs the base setting" in out
    assert re.search(r"base setting: \S+ \(run \w+\): fid1_best = [\d.]+ \+- [\d.]+ \(SE\)", out), out
    assert "gain over the base setting: fid1_best: " in out
    assert "models:/afsweep-fashion-mnist@best-fid1" in out


def test_mlflow_parent_and_child_runs(sweep):
    res, run_dir = sweep
    assert res.exit_code == 0, res.output
    client, _ = _client(run_dir)
    exp = client.get_experiment_by_name("afsweep")
    parents = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'sweep'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "spec.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2
    assert sorted(c.data.tags["afsweep.role"] for c in children) == ["base", "search"]
    base = next(c for c in children if c.data.tags["afsweep.role"] == "base")
    assert base.data.params["swept"] == "" and base.data.tags["afsweep.status"] == "completed"
    assert parent.data.tags["afsweep.base_run_id"] == base.info.run_id
    assert parent.data.metrics["base_fid1_best"] == base.data.metrics["fid1_best"]
    best = client.get_run(parent.data.tags["afsweep.best_run_id"]).data.metrics
    assert parent.data.metrics["gain_fid1"] == pytest.approx(base.data.metrics["fid1_best"] - best["fid1_best"])
    assert parent.data.metrics["gain_fid1_se"] == pytest.approx(math.hypot(base.data.metrics["fid1_best_se"],
                                                                           best["fid1_best_se"]))
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED")
        p = child.data.params
        assert "alpha.k_e" in p and "optim.lr" in p and "total_steps" in p
        if child is not base:
            assert 0.3 <= float(p["alpha.k_e"]) <= 0.5
        # the training curves, the scores with their standard errors, and the probes: an extra EMA half-life
        # and N steps of u(z, t, t)
        for metric in ("loss", "loss_unweighted", "alpha", "ratio_fm", "lr", "fid1", "fid2", "fid1_best",
                       "fid1_se", "fid2_se", "fid1_best_se",
                       "fid1_best_step", "fid1_ema10", "fid_v4", "class_acc1", "cpu_s", "wall_s"):
            hist = client.get_metric_history(child.info.run_id, metric)
            assert hist, f"{metric} not logged"
        fid1 = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "fid1")}
        assert 0 in fid1, "the untrained model is scored at step 0"
        alphas = [m.value for m in client.get_metric_history(child.info.run_id, "alpha")]
        assert max(alphas) <= 1.0 and min(alphas) >= 0.0



def test_what_an_mlflow_user_sees(sweep):
    """Sample grids as images with their step (1 and 2 NFE), the data set as a dataset input, where the runs came
    from as tags, system metrics, ASHA-stopped trials FINISHED, Tune's trial folders named by what was searched."""
    res, run_dir = sweep
    assert res.exit_code == 0, res.output
    client, _ = _client(run_dir)
    exp = client.get_experiment_by_name("afsweep")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"   # opens as a training experiment
    parent = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'sweep'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    for run in [parent, *children]:
        tags = run.data.tags
        assert tags["afsweep.command"].startswith("afsweep launch ") and "--run-dir" in tags["afsweep.command"]
        assert len(tags["mlflow.source.git.commit"]) == 40, tags   # the tests run from a git checkout
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "fashion-mnist:train" and len(ds.dataset.digest) == 16
        assert json.loads(ds.dataset.source)["uri"].endswith("manifest.parquet")
        assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "train"
    for child in children:
        rid = child.info.run_id
        assert child.info.status == "FINISHED"   # completed or stopped by ASHA: both ran as designed
        if child.data.tags["afsweep.status"] == "pruned":
            assert "Stopped early by ASHA" in child.data.tags["mlflow.note.content"]
        images = [a.path for a in client.list_artifacts(rid, "images")]
        for nfe in (1, 2):
            # MLflow's layout: images/<key>+step+<step>+timestamp+<ms>+<uuid>.png (and a compressed preview)
            steps = sorted({int(p.split("+step+")[1].split("+")[0]) for p in images
                            if p.startswith(f"images/samples_nfe{nfe}+step+") and p.endswith(".png")})
            assert steps[:2] == [0, 15], (nfe, images)
        assert any(k.startswith("system/cpu_utilization") for k in child.data.metrics), child.data.metrics.keys()
        assert any(k.startswith("system/system_memory_usage") for k in child.data.metrics)
    # what Optuna learned from each completed trial is the score the registry ranks it by: its best, not its last
    import optuna

    study = optuna.load_study(study_name=parent.data.tags["afsweep.sweep"],
                              storage=f"sqlite:///{run_dir / 'optuna.db'}")
    lrs = {float(c.data.params["optim.lr"]): c.data.metrics["fid1_best"] for c in children
           if c.data.tags["afsweep.role"] == "search"}
    told = [(t.params["optim.lr"], t.value) for t in study.trials if t.state.name == "COMPLETE"]
    for lr, value in told:   # the child run with this trial's learning rate (params are stored to 6 digits)
        nearest = min(lrs, key=lambda x: abs(x - lr))
        assert value == pytest.approx(lrs[nearest]), (told, lrs)
    assert told
    sweep_dir = next((run_dir / "ray").glob("e2e-*"))
    trial_dirs = sorted(d.name for d in sweep_dir.iterdir() if d.is_dir() and d.name.startswith("trial_"))
    searched = [d for d in trial_dirs if not d.endswith("_base")]
    assert len(trial_dirs) == 2 and len(searched) == 1, trial_dirs   # the base trial's folder says so
    assert all("alpha.k_e=" in d and "optim.lr=" in d and "preset" not in d for d in searched), trial_dirs


def test_best_cli_and_registered_generator(sweep):
    res, run_dir = sweep
    assert res.exit_code == 0, res.output
    client, uri = _client(run_dir)
    exp = client.get_experiment_by_name("afsweep")
    children = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'trial'")
    expected = min(children, key=lambda r: r.data.metrics["fid1_best"])

    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "best", "--metric", "fid1", "--json",
                           "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["run_id"] == expected.info.run_id
    assert rows[0]["value"] == pytest.approx(expected.data.metrics["fid1_best"])
    assert set(rows[0]["params"]) == {"alpha.k_e", "optim.lr"}
    assert rows[0]["model_uri"] == "models:/afsweep-fashion-mnist@best-fid1"

    mv = client.get_model_version_by_alias("afsweep-fashion-mnist", "best-fid1")
    assert mv.run_id == expected.info.run_id

    import mlflow
    import numpy as np
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    gen = mlflow.pyfunc.load_model("models:/afsweep-fashion-mnist@best-fid1")
    images = np.asarray(gen.predict(pd.DataFrame({"class_label": [0, 1, 7]}), params={"nfe": 2, "seed": 1}))
    assert images.shape == (3, 1, 28, 28) and images.dtype == np.uint8
    assert images.std() > 0


def test_a_moved_run_dir_loads_its_own_models(sweep, tmp_path):
    """Copy the run dir elsewhere and take the original away: the copy's store, `best` and the registered
    generator work from the new place (the store's absolute artifact locations follow the move)."""
    import shutil

    res, run_dir = sweep
    assert res.exit_code == 0, res.output
    moved = tmp_path / "moved-runs"
    shutil.copytree(run_dir, moved)
    away = run_dir.with_name(run_dir.name + "-away")
    run_dir.rename(away)  # nothing may still read the old place
    try:
        proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "best", "--json", "--run-dir", str(moved)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        load = subprocess.run(
            [sys.executable, "-c", "import sys, mlflow, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]); "
             "g = mlflow.pyfunc.load_model('models:/afsweep-fashion-mnist@best-fid1'); "
             "import numpy as np; x = np.asarray(g.predict(pd.DataFrame({'class_label': [0, 1]}), params={'nfe': 1})); "
             "assert x.shape == (2, 1, 28, 28), x.shape",
             f"sqlite:///{moved / 'mlflow.db'}"], capture_output=True, text=True, timeout=300)
        assert load.returncode == 0, load.stderr[-3000:]
        client, _ = _client(moved)
        exp = client.get_experiment_by_name("afsweep")
        assert exp.artifact_location == (moved / "mlartifacts").resolve().as_uri()
        for r in client.search_runs([exp.experiment_id], ""):
            assert r.info.artifact_uri.startswith(moved.resolve().as_uri()), r.info.artifact_uri
    finally:
        away.rename(run_dir)


DIVERGING_SPEC = """
name: diverges
data: {dataset: fashion-mnist}
base:
  preset: tiny-cpu
  overrides: {total_steps: 30, batch_size: 32, model.size: micro, optim.lr: 1.0e+6, optim.warmup_steps: 0}
train: {workers: 2, eval_every: 15, log_every: 5, eval_samples: 200}
search: {num_trials: 2, max_concurrent: 2, seed: 4, space: {optim.beta1: {type: uniform, low: 0.8, high: 0.9}}}
"""


@pytest.mark.faults
def test_a_sweep_whose_trials_all_fail_loses_nothing(sweep, tmp_path):
    """Runs last (it adds a sweep to the run dir): every trial's loss goes non-finite. The sweep exits non-zero and
    says so; the good model keeps @best-fid1 and @best-fid2; the failed runs stay FAILED and unregistered."""
    res, run_dir = sweep
    assert res.exit_code == 0, res.output
    client, _ = _client(run_dir)
    held = {a: client.get_model_version_by_alias("afsweep-fashion-mnist", a) for a in ("best-fid1", "best-fid2")}

    spec = tmp_path / "diverges.yaml"
    spec.write_text(DIVERGING_SPEC)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", str(spec), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no trial completed (2 failed)" in proc.stderr, proc.stderr[-2000:]

    for alias, mv in held.items():
        assert client.get_model_version_by_alias("afsweep-fashion-mnist", alias).version == mv.version
    exp = client.get_experiment_by_name("afsweep")
    failed = client.search_runs([exp.experiment_id], "tags.`afsweep.sweep` LIKE 'diverges-%' and "
                                "tags.`afsweep.kind` = 'trial'")
    assert len(failed) == 2
    for r in failed:
        assert r.info.status == "FAILED" and r.data.tags["afsweep.status"] == "failed"
        assert "non-finite loss" in r.data.tags.get("afsweep.error", ""), r.data.tags
        assert not client.get_metric_history(r.info.run_id, "restarts"), "a diverged trial is not restarted"
        assert not client.search_model_versions(f"run_id = '{r.info.run_id}'")
    parent = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'sweep' and tags.`afsweep.sweep` LIKE "
                                "'diverges-%'")[0]
    assert parent.info.status == "FAILED"
    record("NaN loss (every trial)", "0 / 2: each fails once, clearly; sweep exits 1", 0, 0, 0, 0, "-",
           wall_s=time.time() - t0)
    best = subprocess.run([sys.executable, "-m", "orchestrator.cli", "best", "--sweep", "all", "--json",
                           "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert best.returncode == 0, best.stderr
    assert json.loads(best.stdout)[0]["run_id"] == held["best-fid1"].run_id
