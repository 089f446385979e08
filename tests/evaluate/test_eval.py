"""`afsweep eval` on a real (tiny) checkpoint in a real MLflow store: run ids and registry URIs, logged metrics equal
to the training-time evaluation, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from alphaflow.data import get_codec
from alphaflow.data.sources import load_builtin
from alphaflow.evaluation import evaluate_generator
from alphaflow.metrics import ReferenceStats, compute_reference_stats, load_extractor
from orchestrator.cli import main
from tests.support.stores import generator_checkpoint, mlflow_store

N = 60


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A trained-for-3-steps generator of 8x8 digits, logged as a run's checkpoint and registered with an alias."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    ckpt, train_state = generator_checkpoint(root / "model.pt", {"model.size": "micro", "model.patch_size": 2,
                                                                 "total_steps": 3, "batch_size": 16}, steps=3)
    client, uri, exp = mlflow_store(root)
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(ckpt), "checkpoint")
    client.create_registered_model("afsweep-digits")
    version = client.create_model_version("afsweep-digits", source=f"runs:/{run_id}/checkpoint", run_id=run_id)
    client.set_registered_model_alias("afsweep-digits", "best-fid1", version.version)
    return {"root": root, "uri": uri, "client": client, "run_id": run_id, "train_state": train_state}


def _eval(store, *args):
    with threadpool_limits(1):
        return CliRunner().invoke(main, ["eval", *args, "--tracking-uri", store["uri"],
                                         "--run-dir", str(store["root"] / "runs"), "--threads", "1"])


def test_eval_of_a_run_logs_the_training_time_numbers(store):
    res = _eval(store, store["run_id"], "--n", str(N))
    assert res.exit_code == 0, res.output
    metrics = store["client"].get_run(store["run_id"]).data.metrics
    for key in ("fid1", "fid2", "class_acc1", "precision2", "recall1", "kid2"):
        assert f"{key}_digits-cnn_n{N}" in metrics
    assert f"fid1_digits-cnn_n{N}" in res.output and "logged to run" in res.output
    arts = [a.path for a in store["client"].list_artifacts(store["run_id"], "eval")]
    assert f"eval/eval_nfe1_digits-cnn_n{N}.png" in arts

    # the worker's evaluation of the same weights, inputs and reference gives the same numbers
    ext = load_extractor("digits-cnn")
    x_test, _ = load_builtin("digits", "test")
    ref = compute_reference_stats(x_test, ext, "digits:test")
    train_state, codec = store["train_state"], get_codec("identity")
    with threadpool_limits(1):
        expected = evaluate_generator(lambda z, y, nfe: train_state.sample(z, y, nfe=nfe, ema=True), codec.decode,
                                      (1, 8, 8), 10, ext, ref, n=N).metrics
    assert metrics[f"fid1_digits-cnn_n{N}"] == pytest.approx(expected["fid1"], rel=1e-6)
    assert metrics[f"fid2_digits-cnn_n{N}"] == pytest.approx(expected["fid2"], rel=1e-6)
    assert metrics[f"class_acc1_digits-cnn_n{N}"] == pytest.approx(expected["class_acc1"])
    # the reference statistics computed for it were cached for the next call
    cached = list((store["root"] / "runs" / "references").glob("digits_test_digits-cnn_*.npz"))
    assert len(cached) == 1 and ReferenceStats.load(cached[0]).n == len(x_test)


def test_eval_of_a_registered_model_logs_to_its_run(store):
    res = _eval(store, "models:/afsweep-digits@best-fid1", "--n", "40", "--nfe", "1")
    assert res.exit_code == 0, res.output
    assert f"run {store['run_id']}" in res.output
    metrics = store["client"].get_run(store["run_id"]).data.metrics
    assert "fid1_digits-cnn_n40" in metrics and "fid2_digits-cnn_n40" not in metrics


def test_eval_of_a_logged_model_id(store):
    exp = store["client"].get_run(store["run_id"]).info.experiment_id
    model = store["client"].create_logged_model(exp, name="generator", source_run_id=store["run_id"])
    res = _eval(store, f"models:/{model.model_id}", "--n", "20", "--nfe", "1", "--no-log")
    assert res.exit_code == 0, res.output
    assert f"run {store['run_id']}" in res.output


def test_no_log_logs_nothing(store):
    res = _eval(store, store["run_id"], "--n", "30", "--nfe", "1", "--no-log")
    assert res.exit_code == 0, res.output
    assert "(not logged)" in res.output
    assert "fid1_digits-cnn_n30" not in store["client"].get_run(store["run_id"]).data.metrics


@pytest.mark.parametrize("args,message", [
    (["0123456789abcdef0123456789abcdef"], "run 0123456789abcdef0123456789abcdef: not found"),
    (["models:/afsweep-digits@nope"], "models:/afsweep-digits@nope: not in the model registry"),
    (["models:/just-a-name"], "expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID"),
])
def test_bad_targets_are_one_line_errors(store, args, message):
    res = _eval(store, *args)
    assert res.exit_code == 2   # bad input
    assert message in res.output and res.output.count("\n") == 1


def test_mismatched_reference_is_a_one_line_error(store, tmp_path):
    np.savez(tmp_path / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    res = _eval(store, store["run_id"], "--n", "20", "--reference", str(tmp_path / "inception.npz"))
    assert res.exit_code == 1
    assert "2048-d features, but extractor digits-cnn gives 128-d" in res.output and res.output.count("\n") == 1
