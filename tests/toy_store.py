"""A real MLflow store (sqlite) with a real, untrained generator checkpoint beside it: what the registry and model
tests log, register and load."""

from __future__ import annotations

from pathlib import Path

from orchestrator import tracking


def toy_store(root: Path, num_classes: int = 3):
    """(client, uri, experiment id, checkpoint path) for a micro DiT on 1x8x8 latents."""
    from alphaflow.config import apply_overrides
    from alphaflow.presets import get_preset
    from alphaflow.train_state import TrainState

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = tracking.client_for(uri)
    exp = tracking.ensure_experiment(client, "afsweep", root / "mlartifacts")
    cfg = apply_overrides(get_preset("tiny-cpu"), {"model.size": "micro"})
    ckpt = root / "model.pt"
    TrainState(cfg, image_shape=(1, 8, 8), num_classes=num_classes).save_checkpoint(str(ckpt), extra={"data": {
        "mean": [0.0], "std": [1.0], "codec": "identity", "dataset_id": "toy", "class_names": []}})
    return client, uri, exp, ckpt
