"""Logging the registered model: the pyfunc whose code is `generator_pyfunc.py` (models-from-code), with the
`alphaflow` package and the trial's EMA checkpoint packaged beside it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow

import alphaflow

MODEL_CODE = Path(__file__).with_name("generator_pyfunc.py")
# what the packaged model needs to sample (alphaflow itself travels in the model's code/ folder; mlflow is added by
# MLflow); the VAE codec's models also need diffusers
MODEL_REQUIREMENTS = ["torch==2.13.0", "numpy>=1.26", "pillow>=10", "pydantic>=2.7", "pandas"]


@contextmanager
def global_tracking_uri(uri: str):
    """MLflow's fluent API (log_model, and resolving a `models:/m-...` source when registering) uses the global
    tracking URI, and MLflow exports it to the environment (MLFLOW_TRACKING_URI, which mirrors the global one):
    set it for the block, then put it back (None unsets both)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_generator_model(tracking_uri: str, run_id: str, checkpoint_path: str, name: str,
                        sampling: dict | None = None) -> str:
    """Log the pyfunc into an existing run (the trial's child run); returns its model URI (MLflow 3 keeps logged
    models apart from the run's artifacts: `models:/m-...`, not `runs:/<run>/<name>`). `sampling`: settings the
    model samples with by default (a sampling sweep's best: guidance, t_mid, two_nfe, half_life), packaged as
    sampling.json."""
    with global_tracking_uri(tracking_uri):
        return _log(run_id, checkpoint_path, name, sampling)


def _log(run_id: str, checkpoint_path: str, name: str, sampling: dict | None = None) -> str:
    client = mlflow.MlflowClient()
    before = client.get_run(run_id).info  # logging reopens the run: its status and end time are put back after
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint about integer columns in the example
        code = Path(tmp) / "alphaflow"
        shutil.copytree(Path(alphaflow.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
        artifacts = {"checkpoint": checkpoint_path}
        if sampling:
            settings = Path(tmp) / "sampling.json"
            settings.write_text(json.dumps(sampling))
            artifacts["sampling"] = str(settings)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),   # models-from-code: no cloudpickled object
            code_paths=[str(code)],
            artifacts=artifacts,
            # the signature comes from predict's type hints; params must be in it, or pyfunc ignores them
            input_example=([{"class_label": 0}], {"nfe": 1, "seed": 0}),
            pip_requirements=MODEL_REQUIREMENTS,
        )
    if before.end_time:  # an ended trial keeps its true duration and state (start_run would make it FINISHED now)
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    return info.model_uri
