"""Checkpoints: atomic save, `weights_only=True` load (tensors and plain Python containers only).

Contents: model, ema ({half-life: {name: tensor}}), ema_primary, optimizer, step, rng, config (dict), image_shape,
num_classes, extra (the caller's: data position, best metrics, data info).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from alphaflow.config import config_from_dict
from alphaflow.errors import first_line
from alphaflow.model import build_model

FORMAT = 1


def save_state(path: str, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then os.replace: readers never see half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=str(target.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_state(path: str) -> dict[str, Any]:
    """The checkpoint's dict; one-line errors for a missing or unreadable file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line(e, 200)})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not an alphaflow checkpoint (no model/config entries)")
    return state


def load_generator(path: str, ema: bool = True, half_life: float | None = None):
    """(model, info) for inference: the DiT with its EMA weights (or the online ones when ema=False), in eval
    mode. info: {"config": dict, "image_shape": tuple, "num_classes": int, "extra": dict, "step": int}."""
    state = load_state(path)
    cfg = config_from_dict(state["config"])
    shape = tuple(int(v) for v in state["image_shape"])
    model = build_model(cfg.model, shape[0], shape[1:], int(state["num_classes"]),
                        guidance_conditioned=cfg.guidance.conditioned)
    weights = state["model"]
    if ema:
        key = repr(float(half_life if half_life is not None else state["ema_primary"]))
        if key not in state["ema"]:
            raise KeyError(f"{path}: no EMA with half-life {key}; it has {', '.join(state['ema'])}")
        weights = state["ema"][key]
    model.load_state_dict(weights)
    model.eval()
    info = {"config": state["config"], "image_shape": shape, "num_classes": int(state["num_classes"]),
            "extra": state.get("extra", {}), "step": int(state["step"])}
    return model, info
