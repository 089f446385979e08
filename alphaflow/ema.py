"""Exponential moving averages of the weights, by half-life in optimizer steps, several at once.

decay = 0.5 ** (1 / h_eff) with the ramped half-life h_eff = min(half_life, ramp * step): early in training
the average forgets the random initialisation quickly (at step 0 it is a plain copy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn as nn


def _key(half_life: float) -> str:
    return repr(float(half_life))


class EMA:
    def __init__(self, model: nn.Module, half_lives: Iterable[float], ramp: float = 0.05, flat=None):
        """flat: the model's `alphaflow.flat_params.FlatParameters`; each average is then one flat buffer too,
        updated by one lerp (the per-parameter views keep the API and the checkpoint layout)."""
        half_lives = [float(h) for h in half_lives]
        self.half_lives = sorted(set(half_lives))
        if not self.half_lives or min(self.half_lives) <= 0:
            raise ValueError(f"ema half-lives must be > 0, got {self.half_lives}")
        self.ramp = float(ramp)
        self.primary = half_lives[0]   # the first one given: what sampling uses by default
        self.flat = flat if flat is not None and len(flat.params) == len(list(model.parameters())) else None
        if self.flat is not None:
            self.flat_shadows = {_key(h): flat.param.detach().clone() for h in self.half_lives}
            self.shadows: dict[str, list[torch.Tensor]] = {k: flat.views(b) for k, b in self.flat_shadows.items()}
        else:
            self.shadows = {_key(h): [p.detach().clone() for p in model.parameters()] for h in self.half_lives}

    def decay(self, half_life: float, step: int) -> float:
        h = min(float(half_life), self.ramp * step) if self.ramp > 0 else float(half_life)
        return 0.0 if h <= 0 else 0.5 ** (1.0 / h)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number `step` (1-based)."""
        if self.flat is not None:   # its owner (TrainState) checks the layout before every backward
            for h in self.half_lives:
                self.flat_shadows[_key(h)].lerp_(self.flat.param.detach(), 1.0 - self.decay(h, step))
            return
        params = [p.detach() for p in model.parameters()]
        for h in self.half_lives:
            shadow = self.shadows[_key(h)]
            torch._foreach_lerp_(shadow, params, 1.0 - self.decay(h, step))

    def _shadow(self, half_life: float | None) -> list[torch.Tensor]:
        key = _key(self.primary if half_life is None else half_life)
        if key not in self.shadows:
            raise KeyError(f"no EMA with half-life {half_life}; kept: {', '.join(map(str, self.half_lives))}")
        return self.shadows[key]

    @torch.no_grad()
    def copy_to(self, model: nn.Module, half_life: float | None = None) -> None:
        for p, s in zip(model.parameters(), self._shadow(half_life)):
            p.copy_(s)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module, half_life: float | None = None) -> Iterator[nn.Module]:
        """Inside: `model` holds the EMA weights; the online weights come back afterwards."""
        backup = [p.detach().clone() for p in model.parameters()]
        self.copy_to(model, half_life)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, b in zip(model.parameters(), backup):
                    p.copy_(b)

    def state_dict(self, model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
        """{half-life: {parameter name: tensor}} for checkpoints."""
        names = [n for n, _ in model.named_parameters()]
        return {k: {n: s.clone() for n, s in zip(names, shadow)} for k, shadow in self.shadows.items()}

    def load_state_dict(self, model: nn.Module, state: dict[str, dict[str, torch.Tensor]]) -> None:
        names = [n for n, _ in model.named_parameters()]
        for k in self.shadows:
            if k not in state:
                raise KeyError(f"checkpoint has no EMA with half-life {k}; it has {', '.join(state)}")
            with torch.no_grad():
                for s, n in zip(self.shadows[k], names):
                    s.copy_(state[k][n])
