"""The registered model as its users load it: code logged with it (models-from-code, the alphaflow package in its
code/ folder), a signature from predict's type hints, class labels checked, and loading in a separate virtual
environment where afsweep is not installed, by `mlflow.pyfunc.load_model` and by `mlflow models predict`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pandas as pd
import pytest

from orchestrator import tracking
from tests.support.stores import toy_store

MODEL = "afsweep-pyfunc-test"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A real TrainState's checkpoint logged as the pyfunc and registered as MODEL@best-fid1 (3 classes)."""
    root = tmp_path_factory.mktemp("pyfunc")
    client, uri, exp, ckpt = toy_store(root)
    run_id = client.create_run(exp).info.run_id
    client.log_artifact(run_id, str(ckpt), "checkpoint")
    model_uri = tracking.register_generator(client, uri, run_id, MODEL, ["best-fid1"])
    return uri, model_uri, root


def _load(uri: str, model_uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(None)


def test_signature_comes_from_the_type_hints_and_labels_are_checked(registered):
    uri, model_uri, _ = registered
    model = _load(uri, model_uri)
    sig = model.metadata.signature
    assert sig.inputs.to_dict()[0]["properties"]["class_label"]["type"] == "long", sig
    assert {p.name: p.default for p in sig.params.params} == {"nfe": 1, "seed": 0}
    assert model.metadata.flavors["python_function"].get("model_code_path"), "models-from-code, not a pickle"
    images = model.predict(pd.DataFrame({"class_label": [0, 2]}), params={"nfe": 2, "seed": 1})
    assert images.shape == (2, 1, 8, 8) and images.dtype == np.uint8
    for bad in (3, -1):
        with pytest.raises(Exception, match=rf"class_label {bad}: out of range, this model has 3 classes"):
            model.predict(pd.DataFrame({"class_label": [0, bad]}))
    with pytest.raises(Exception, match="class_label"):
        model.predict(pd.DataFrame({"class_label": ["a"]}))


def test_the_model_loads_where_afsweep_is_not_installed(registered, tmp_path):
    """A fresh venv that sees this environment's third-party packages (a .pth line; its editable-install hook is
    not run from there) but not afsweep, run outside the checkout."""
    uri, model_uri, root = registered
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "shared_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = str(venv / "bin" / "python")
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_TRACKING_URI"] = uri
    script = textwrap.dedent(f"""
        import importlib.util, json
        assert importlib.util.find_spec("alphaflow") is None, "afsweep must not be importable here"
        import mlflow, pandas as pd
        model = mlflow.pyfunc.load_model("{model_uri}")
        images = model.predict(pd.DataFrame({{"class_label": [0, 1, 2]}}), params={{"nfe": 1, "seed": 0}})
        import alphaflow
        print(json.dumps({{"shape": list(images.shape), "alphaflow": alphaflow.__file__}}))
    """)
    out = subprocess.run([python, "-c", script], cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == [3, 1, 8, 8]
    assert "/code/alphaflow/" in got["alphaflow"] and not got["alphaflow"].startswith(str(tracking.__file__)[:-30])

    # a type-hinted model's payload, as `mlflow models serve` takes it too
    (away / "input.json").write_text(json.dumps({"inputs": [{"class_label": 1}, {"class_label": 2}],
                                                 "params": {"nfe": 2}}))
    cli = subprocess.run([python, "-m", "mlflow", "models", "predict", "-m", model_uri, "-i", "input.json",
                          "-t", "json", "-o", "out.json", "--env-manager", "local"],
                         cwd=away, env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    predictions = np.array(json.loads((away / "out.json").read_text())["predictions"])
    assert predictions.shape == (2, 1, 8, 8) and predictions.min() >= 0 and predictions.max() <= 255
