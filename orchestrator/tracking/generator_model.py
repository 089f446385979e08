"""The registered model: an MLflow pyfunc that generates images from a trial's EMA checkpoint.

    model = mlflow.pyfunc.load_model("models:/afsweep-fashion-mnist@best-fid1")
    images = model.predict(pd.DataFrame({"class_label": [0, 1, 2]}), params={"nfe": 1, "seed": 0})
    # -> uint8 array (N, C, H, W)
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import mlflow
import numpy as np
import torch

from alphaflow.checkpoint import load_generator
from alphaflow.evaluation import LatentDecoder
from alphaflow.sampling import sample


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.model, self.info = load_generator(context.artifacts["checkpoint"], ema=True)
        self.model.eval()
        data = self.info["extra"]["data"]
        self.decode = LatentDecoder(data["codec"], data["mean"], data["std"])
        sampling = self.info["config"].get("sampling", {})
        self.t_mid = float(sampling.get("t_mid", 0.5))
        self.two_nfe = sampling.get("two_nfe", "ode")

    def predict(self, context, model_input, params=None):
        params = params or {}
        nfe = int(params.get("nfe", 1))
        seed = int(params.get("seed", 0))
        labels = np.array(model_input["class_label"], dtype=np.int64)  # a writable copy for torch
        y = torch.from_numpy(labels)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(labels), *self.info["image_shape"]), generator=g)
        with torch.no_grad():
            z = sample(self.model, noise, y, nfe=nfe, two_nfe=self.two_nfe, t_mid=self.t_mid, generator=g)
        return self.decode(z)


@contextmanager
def global_tracking_uri(uri: str):
    """MLflow's fluent API (log_model, and resolving a `models:/m-...` source when registering) uses the global
    tracking URI, and MLflow exports it to the environment (MLFLOW_TRACKING_URI, which mirrors the global one):
    set it for the block, then put it back (None unsets both)."""
    import os

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_generator_model(tracking_uri: str, run_id: str, checkpoint_path: str, name: str) -> str:
    """Log the pyfunc into an existing run (the trial's child run); returns its model URI (MLflow 3 keeps logged
    models apart from the run's artifacts: `models:/m-...`, not `runs:/<run>/<name>`)."""
    with global_tracking_uri(tracking_uri):
        return _log(run_id, checkpoint_path, name)


def _log(run_id: str, checkpoint_path: str, name: str) -> str:
    import pandas as pd
    from mlflow.models import infer_signature

    client = mlflow.MlflowClient()
    before = client.get_run(run_id).info  # logging reopens the run: its status and end time are put back after
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # MLflow's hints about integer columns, type-hinted predict() and input examples: the signature is explicit
        warnings.simplefilter("ignore", UserWarning)
        # params must be in the signature, or pyfunc silently ignores them at predict time
        signature = infer_signature(pd.DataFrame({"class_label": [0]}), params={"nfe": 1, "seed": 0})
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=GeneratorModel(),
            artifacts={"checkpoint": checkpoint_path},
            signature=signature,
            pip_requirements=["afsweep", "torch==2.13.0"],
        )
    if before.end_time:  # an ended trial keeps its true duration and state (start_run would make it FINISHED now)
        client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    return info.model_uri
