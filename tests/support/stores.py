"""Real MLflow stores (sqlite) and real generator checkpoints, built the one way every test that needs them does:
the registry, model, eval, sampling-sweep, Pareto and warm-start tests."""

from __future__ import annotations

from pathlib import Path

import torch

from alphaflow.config import apply_overrides
from alphaflow.data import get_codec
from alphaflow.data.sources import load_builtin
from alphaflow.presets import get_preset
from alphaflow.train_state import TrainState
from orchestrator import tracking

BATCH = 16


def mlflow_store(root: Path):
    """(client, uri, experiment id) of a new sqlite store in `root`, with the experiment `afsweep`."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = tracking.client_for(uri)
    return client, uri, tracking.ensure_experiment(client, "afsweep", root / "mlartifacts")


def generator_checkpoint(path: Path, overrides: dict, *, steps: int = 0, num_classes: int = 10,
                         dataset_id: str = "digits:train", perturb: float = 0.0) -> tuple[Path, TrainState]:
    """A tiny-cpu generator with `overrides`, trained `steps` steps of 16 digits (untrained with 0), its EMA weights
    perturbed by `perturb` (a seeded normal), saved at `path`: (path, its TrainState)."""
    cfg = apply_overrides(get_preset("tiny-cpu"), overrides)
    state = TrainState(cfg, image_shape=(1, 8, 8), num_classes=num_classes)
    if steps:
        x, y = load_builtin("digits", "train")
        latents = torch.from_numpy(get_codec("identity").encode(x[:BATCH * steps]))
        for i in range(steps):
            state.train_step(latents[BATCH * i:BATCH * (i + 1)], torch.from_numpy(y[BATCH * i:BATCH * (i + 1)]))
    if perturb:
        g = torch.Generator().manual_seed(0)
        for shadow in state.ema.shadows.values():
            for t in shadow:
                t.add_(torch.randn(t.shape, generator=g) * perturb)
    path.parent.mkdir(parents=True, exist_ok=True)
    state.save_checkpoint(str(path), extra={"data": {"mean": [0.0], "std": [1.0], "codec": "identity",
                                                     "dataset_id": dataset_id, "class_names": []}})
    return path, state


def toy_store(root: Path, num_classes: int = 3):
    """(client, uri, experiment id, checkpoint path): a store beside an untrained micro DiT on 1x8x8 latents."""
    client, uri, exp = mlflow_store(root)
    ckpt, _ = generator_checkpoint(root / "model.pt", {"model.size": "micro"}, num_classes=num_classes,
                                   dataset_id="toy")
    return client, uri, exp, ckpt
