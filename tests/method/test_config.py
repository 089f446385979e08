"""The method config: dotted overrides, unknown keys and wrong types refused, user-registered r = t samplers."""

from __future__ import annotations

import pytest
import torch

from alphaflow.config import ConfigError, TrainConfig, apply_overrides, flatten
from alphaflow.timesteps import FM_SAMPLERS, register_fm_sampler


def test_dotted_overrides_and_flatten():
    cfg = apply_overrides(TrainConfig(), {"alpha.k_e": 0.6, "optim": {"lr": 3e-4}, "total_steps": 50.0})
    flat = flatten(cfg)
    assert flat["alpha.k_e"] == 0.6 and flat["optim.lr"] == 3e-4 and flat["total_steps"] == 50
    assert isinstance(flat["total_steps"], int)


@pytest.mark.parametrize("overrides, message", [
    ({"alpha.nope": 1}, "unknown key 'alpha.nope'"),
    ({"optim.lr": "fast"}, "optim.lr: expected a number"),
    ({"optim.lr": True}, "optim.lr: expected a number"),
    ({"total_steps": 2.5}, "total_steps: expected an integer"),
    ({"loss.beta": "yes"}, "loss.beta: Input should be a valid boolean"),
    ({"alpha.end": 1.5}, "alpha.end: Input should be less than or equal to 1"),
    ({"alpha": 1}, "alpha: is a section"),
    ({"alpha.kind": "zigzag"}, "alpha.kind: 'zigzag' is not one of"),
    ({"alpha.k_s": 0.8, "alpha.k_e": 0.2}, "must not be before"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), overrides)


def test_user_registered_fm_sampler_is_selectable():
    with pytest.raises(ConfigError, match="time.fm_sampler"):
        apply_overrides(TrainConfig(), {"time.fm_sampler": "late-t"})
    register_fm_sampler("late-t", lambda n, cfg, g: 0.5 + 0.5 * torch.rand(n, generator=g))
    try:
        cfg = apply_overrides(TrainConfig(), {"time.fm_sampler": "late-t"})
        assert cfg.time.fm_sampler == "late-t"
    finally:
        FM_SAMPLERS.pop("late-t")
