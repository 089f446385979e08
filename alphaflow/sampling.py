"""Few-step generation with the average-velocity network (docs/method.md#sampling). Noise at t = 1, data at t = 0."""

from __future__ import annotations

import torch
import torch.nn as nn


def _with_guidance(model: nn.Module, g: torch.Tensor | None):
    if g is None:
        return model
    g = g.to(dtype=torch.float32)
    return lambda z, r, t, y: model(z, r, t, y, g.to(z.device))


def _full(like: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((like.shape[0],), float(value), dtype=like.dtype, device=like.device)


@torch.no_grad()
def sample(model: nn.Module, noise: torch.Tensor, y: torch.Tensor, nfe: int = 1, two_nfe: str = "ode",
           t_mid: float = 0.5, generator: torch.Generator | None = None,
           g: torch.Tensor | None = None) -> torch.Tensor:
    """1-NFE: x = eps - u(eps, 0, 1).
    2-NFE ode: z = eps - (1 - t_mid) u(eps, t_mid, 1), x = z - t_mid u(z, 0, t_mid).
    2-NFE consistency: x1 = eps - u(eps, 0, 1), z = (1 - t_mid) x1 + t_mid eps' (fresh noise from `generator`),
    x = z - t_mid u(z, 0, t_mid).
    g: the guidance condition (B, 3) of a guidance-conditioned model, passed to every call."""
    y = y.to(noise.device)
    model = _with_guidance(model, g)
    zero, one, mid = _full(noise, 0.0), _full(noise, 1.0), _full(noise, t_mid)
    if nfe == 1:
        return noise - model(noise, zero, one, y).to(noise.dtype)
    if nfe != 2:
        raise ValueError(f"nfe: must be 1 or 2, got {nfe}")
    if two_nfe == "ode":
        z = noise - (1 - t_mid) * model(noise, mid, one, y).to(noise.dtype)
    elif two_nfe == "consistency":
        x1 = noise - model(noise, zero, one, y).to(noise.dtype)
        fresh = torch.randn(noise.shape, generator=generator, dtype=noise.dtype).to(noise.device)
        z = (1 - t_mid) * x1 + t_mid * fresh
    else:
        raise ValueError(f"sampling.two_nfe: {two_nfe!r} is not one of ode, consistency")
    return z - t_mid * model(z, zero, mid, y).to(noise.dtype)


@torch.no_grad()
def sample_n_step(model: nn.Module, noise: torch.Tensor, y: torch.Tensor, steps: int,
                  g: torch.Tensor | None = None) -> torch.Tensor:
    """Euler steps on the uniform grid 1 -> 0 with the instantaneous velocity u(z, t, t) (a probe of v)."""
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    y = y.to(noise.device)
    model = _with_guidance(model, g)
    grid = torch.linspace(1.0, 0.0, steps + 1).tolist()
    z = noise
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        tt = _full(noise, t_cur)
        z = z - (t_cur - t_next) * model(z, tt, tt, y).to(noise.dtype)
    return z
