"""`afsweep sample-sweep` on real (tiny) checkpoints in a real MLflow store: nested runs per point, the plot, the best
read back from MLflow, the registered version that samples with its best settings, one-line errors, Ray tasks."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from orchestrator.cli import main
from tests.support.stores import generator_checkpoint, mlflow_store

N = 60


def _checkpoint(root, name: str, overrides: dict, perturb: float = 0.0):
    # 40 steps: enough that the knobs change the uint8 images (an untrained u is nearly constant in r and t);
    # perturb: 40 steps barely move the guidance embedding's effect past uint8 rounding, so make it visible
    ckpt, _ = generator_checkpoint(root / name / "model.pt", {
        "model.size": "micro", "model.patch_size": 2, "total_steps": 40, "batch_size": 16,
        "ema.extra_half_lives": [5.0], "ema.ramp": 0.0, **overrides}, steps=40, perturb=perturb)
    return ckpt


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sampling")
    client, uri, exp = mlflow_store(root)
    runs = {}
    for name, over, perturb in (("plain", {}, 0.0), ("imf", {"loss.objective": "imf", "alpha.kind": "constant",
                                                             "alpha.start": 0.0, "guidance.conditioned": True}, 0.05)):
        run_id = client.create_run(exp, tags={"afsweep.kind": "trial"}).info.run_id
        client.log_artifact(run_id, str(_checkpoint(root, name, over, perturb)), "checkpoint")
        runs[name] = run_id
    return {"root": root, "uri": uri, "client": client, "runs": runs}


def _run(store, *args):
    with threadpool_limits(1):
        return CliRunner().invoke(main, ["sample-sweep", *args, "--n", str(N), "--tracking-uri", store["uri"],
                                         "--run-dir", str(store["root"] / "runs"), "--threads", "1"])


def test_grid_logs_each_point_under_the_trial_and_picks_the_best(store):
    client, trial = store["client"], store["runs"]["plain"]
    res = _run(store, trial, "--knob", "t_mid=0.3,0.7", "--knob", "half_life=25,5", "--json",
               "--register", "best-sampling", "--model-name", "afsweep-digits")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    points = client.search_runs([client.get_run(trial).info.experiment_id],
                                f"tags.`afsweep.sampling_sweep` = '{out['sweep_id']}'")
    assert len(points) == 4
    assert all(p.data.tags["mlflow.parentRunId"] == trial and p.info.status == "FINISHED" for p in points)
    grid = {(float(p.data.params["t_mid"]), float(p.data.params["half_life"])) for p in points}
    assert grid == {(0.3, 25.0), (0.3, 5.0), (0.7, 25.0), (0.7, 5.0)}
    assert all({"fid1", "fid2"} <= set(p.data.metrics) and p.data.params["extractor"] == "digits-cnn"
               and p.data.params["eval_n"] == str(N) for p in points)
    # fid1 depends on the EMA, fid2 on t_mid: the knobs reach the sampler
    by = {(float(p.data.params["t_mid"]), float(p.data.params["half_life"])): p.data.metrics for p in points}
    assert by[(0.3, 25.0)]["fid1"] == pytest.approx(by[(0.7, 25.0)]["fid1"], rel=1e-9)
    assert by[(0.3, 25.0)]["fid1"] != by[(0.3, 5.0)]["fid1"]
    assert by[(0.3, 25.0)]["fid2"] != by[(0.7, 25.0)]["fid2"]
    best_fid1 = min(p.data.metrics["fid1"] for p in points)   # ties are possible: fid1 does not use t_mid
    assert by[(out["best"]["t_mid"], out["best"]["half_life"])]["fid1"] == best_fid1
    files = {f.path for f in client.list_artifacts(trial, f"sampling_sweep/{out['sweep_id']}")}
    folder = f"sampling_sweep/{out['sweep_id']}"
    assert {f"{folder}/fid_vs_t_mid.png", f"{folder}/summary.json"} <= files
    png = client.download_artifacts(trial, f"sampling_sweep/{out['sweep_id']}/fid_vs_t_mid.png",
                                    str(store["root"] / "dl"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the registered version packages the best settings, and the loaded pyfunc samples with them by default
    version = client.get_model_version_by_alias("afsweep-digits", "best-sampling")
    assert version.tags["afsweep.sampling.t_mid"] == str(out["best"]["t_mid"])
    mlflow.set_tracking_uri(store["uri"])
    try:
        model = mlflow.pyfunc.load_model("models:/afsweep-digits@best-sampling")
    finally:
        mlflow.set_tracking_uri(None)
    inner = model.unwrap_python_model()
    assert inner.settings["t_mid"] == out["best"]["t_mid"] and inner.cfg.sampling.t_mid == out["best"]["t_mid"]
    assert inner.settings["half_life"] == out["best"]["half_life"]
    images = model.predict([{"class_label": 1}, {"class_label": 2}], params={"nfe": 2, "seed": 0})
    assert images.shape == (2, 1, 8, 8) and images.dtype.name == "uint8"


def test_optuna_sweeps_the_guidance_of_a_conditioned_model(store):
    res = _run(store, store["runs"]["imf"], "--knob", "guidance=1:4", "--optuna", "3", "--nfe", "1", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    scales = [p["settings"]["guidance"] for p in out["points"]]
    assert len(scales) == 3 and all(1.0 <= s <= 4.0 for s in scales) and len(set(scales)) == 3
    fids = [p["metrics"]["fid1"] for p in out["points"]]
    assert len(set(fids)) == 3          # each scale samples differently from one trained model
    assert out["best_metrics"]["fid1"] == min(fids)


@pytest.mark.parametrize("args,message", [
    (["--knob", "guidance=1,2"], "not trained with guidance as a condition"),
    (["--knob", "speed=1,2"], "unknown knob 'speed'"),
    (["--knob", "half_life=7"], "keeps EMAs with half-lives 5, 25"),
    (["--knob", "t_mid=0.2:0.8"], "needs --optuna N"),
    ([], "no --knob given"),
])
def test_bad_knobs_are_one_line_errors(store, args, message):
    res = _run(store, store["runs"]["plain"], *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_points_run_as_ray_tasks(store):
    res = _run(store, store["runs"]["plain"], "--knob", "probe_steps=1,4", "--metric", "fid_probe", "--nfe", "1",
               "--ray", "local", "--parallel", "2", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    probes = {p["settings"]["probe_steps"]: p["metrics"]["fid_probe"] for p in out["points"]}
    assert set(probes) == {1, 4} and probes[1] != probes[4]
    local = _run(store, store["runs"]["plain"], "--knob", "probe_steps=1,4", "--metric", "fid_probe", "--nfe", "1",
                 "--json")
    same = {p["settings"]["probe_steps"]: p["metrics"]["fid_probe"] for p in json.loads(local.stdout)["points"]}
    assert same == pytest.approx(probes, rel=1e-6)   # a Ray task scores what the local process scores
