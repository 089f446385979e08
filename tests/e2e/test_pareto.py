"""End to end, several objectives and a warm start: a real multi-objective sweep (Ray Tune + Optuna's multi-objective
TPE, no ASHA, Ray Train with 2 gloo workers per trial, MLflow on sqlite), `afsweep best --pareto` read back, the
parent run's Pareto plot; then a sweep warm-started from it runs the earlier best first with its history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.sweep.pareto import dominates

pytestmark = pytest.mark.slow

SPEC = """
name: mo
data: {dataset: fashion-mnist}
base:
  preset: tiny-cpu
  overrides: {total_steps: 30, batch_size: 32, model.size: micro}
train: {workers: 2, eval_every: 15, log_every: 5, eval_samples: 200}
search:
  num_trials: 3
  max_concurrent: 2
  include_base: false     # every trial a point of the study (the warm start below reads them all)
  seed: 5
  objectives: {fid1: min, wall_s: min}
  space:
    alpha.k_e: {type: uniform, low: 0.3, high: 0.5}
    optim.lr: {type: loguniform, low: 1.0e-3, high: 3.0e-3}
"""

WARM_SPEC = SPEC.replace("name: mo", "name: warm").replace("num_trials: 3", "num_trials: 1").replace(
    "  objectives: {fid1: min, wall_s: min}\n", "  warm_start: latest\n  warm_start_top: 1\n")
CLI = [sys.executable, "-m", "orchestrator.cli"]


def _launch(root: Path, name: str, text: str) -> subprocess.CompletedProcess:
    spec = root / f"{name}.yaml"
    spec.write_text(text)
    return subprocess.run(CLI + ["launch", str(spec), "--run-dir", str(root / "runs")], capture_output=True, text=True,
                          timeout=1200)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto-e2e")
    return _launch(root, "mo", SPEC), root / "runs"


def _client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _sweep_runs(client, prefix: str):
    exp = client.get_experiment_by_name("afsweep")
    parent = client.search_runs([exp.experiment_id], f"tags.`afsweep.kind` = 'sweep' and tags.`afsweep.sweep` LIKE "
                                f"'{prefix}-%'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return parent, children


def _study(run_dir: Path, parent):
    return optuna.load_study(study_name=parent.data.tags["afsweep.sweep"], storage=f"sqlite:///{run_dir / 'optuna.db'}")


def _point(run) -> tuple[float, float]:
    return run.data.metrics["fid1_best"], run.data.metrics["wall_s"]


def test_best_pareto_is_the_front_of_the_sweep(sweep):
    proc, run_dir = sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "objectives fid1:min,wall_s:min, every trial to its end (no ASHA)" in proc.stdout
    assert "Pareto front on fid1, wall_s:" in proc.stdout
    client = _client(run_dir)
    parent, children = _sweep_runs(client, "mo")
    assert len(children) == 3 and all(c.data.tags["afsweep.status"] == "completed" for c in children)
    res = CliRunner().invoke(main, ["best", "--pareto", "--json", "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    by_id = {c.info.run_id: c for c in children}
    front = {r["run_id"] for r in rows}
    assert front and front <= set(by_id)
    for r in rows:   # each printed point is the run's told values, and no trial dominates it
        assert tuple(r["objectives"].values()) == pytest.approx(_point(by_id[r["run_id"]]))
        assert not any(dominates(_point(c), _point(by_id[r["run_id"]]), ["min", "min"]) for c in children)
    for c in children:   # every trial off the front is dominated by a point on it
        if c.info.run_id not in front:
            assert any(dominates(_point(by_id[f]), _point(c), ["min", "min"]) for f in front)
    assert [r["pick"] for r in rows] == list(range(1, len(rows) + 1))
    assert [r["objectives"]["fid1"] for r in rows] == sorted(r["objectives"]["fid1"] for r in rows)
    # the parent run's artifacts: the plot and the same front
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.png", "pareto.json"} <= names, names
    with open(client.download_artifacts(parent.info.run_id, "pareto.png", str(run_dir.parent)), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(client.download_artifacts(parent.info.run_id, "pareto.json", str(run_dir.parent))) as f:
        assert [r["run_id"] for r in json.load(f)] == [r["run_id"] for r in rows]
    assert parent.data.metrics["pareto_size"] == len(rows)


def test_optuna_learned_both_objectives_of_every_trial(sweep):
    proc, run_dir = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, children = _sweep_runs(_client(run_dir), "mo")
    study = _study(run_dir, parent)
    assert len(study.directions) == 2
    told = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(told) == 3
    lrs = {float(c.data.params["optim.lr"]): c for c in children}
    for t in told:   # the child run with this trial's learning rate (params are stored to 6 digits)
        run = lrs[min(lrs, key=lambda x: abs(x - t.params["optim.lr"]))]
        assert t.values == pytest.approx(list(_point(run)))


def test_best_pareto_registers_a_picked_point(sweep):
    proc, run_dir = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = CliRunner().invoke(main, ["best", "--pareto", "--json", "--register", "pareto-1", "--pick", "1",
                                    "--run-dir", str(run_dir)])
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout)[0]
    assert first["model_uri"] == "models:/afsweep-fashion-mnist@pareto-1"
    mv = _client(run_dir).get_model_version_by_alias("afsweep-fashion-mnist", "pareto-1")
    assert mv.run_id == first["run_id"]


def test_a_warm_started_sweep_runs_the_earlier_best_first(sweep):
    proc, run_dir = sweep
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = _client(run_dir)
    earlier_parent, earlier = _sweep_runs(client, "mo")
    best = min(earlier, key=lambda c: c.data.metrics["fid1_best"])
    warm = _launch(run_dir.parent, "warm", WARM_SPEC)
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
    name = earlier_parent.data.tags["afsweep.sweep"]
    assert f"warm start from sweep {name}: 3 of its trials in the study (3 complete, 0 pruned), its best 1 run " \
           f"first" in warm.stdout
    parent, (child,) = _sweep_runs(client, "warm")
    assert parent.data.params["warm_start"] == name and parent.data.params["warm_start_trials"] == "3"
    for key in ("optim.lr", "alpha.k_e"):      # the first (here the only) trial is the earlier best
        assert child.data.params[key] == best.data.params[key]
    study = _study(run_dir, parent)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4     # the history of 3, then the new trial
    assert study.trials[-1].value == pytest.approx(child.data.metrics["fid1_best"])
