"""The steps that the objective family's two losses (alpha_flow_loss in alphaflow/objective.py, imf_loss in
alphaflow/imf.py) share: the batch draw, the training-time guidance velocity, the network's JVP along a tangent, the
per-row error and the logs.

A loss reads as: batch = draw_batch(...); v_cfg = guided_velocity(...); its own prediction and target; per_row_loss;
its weights; step_logs(...).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from alphaflow import tangent
from alphaflow.config import GuidanceConfig, TrainConfig
from alphaflow.model import math_attention
from alphaflow.timesteps import sample_times


def rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast against `like`."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def predict(model: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
            g: torch.Tensor | None = None) -> torch.Tensor:
    """u(z, r, t | y), with the guidance condition g where there is one (other models take four arguments)."""
    return model(z, r, t, y) if g is None else model(z, r, t, y, g)


@dataclass
class Batch:
    """One minibatch's draws. fm_mask: the rows with r = t (traj_idx: the others, r < t); y: the labels after
    dropout (keep: the rows whose label was kept, None without dropout); z_t = (1 - t) x + t eps; v = eps - x."""

    t: torch.Tensor
    r: torch.Tensor
    fm_mask: torch.Tensor
    y: torch.Tensor
    keep: torch.Tensor | None
    eps: torch.Tensor
    z_t: torch.Tensor
    v: torch.Tensor
    traj_idx: torch.Tensor
    n_fm: int

    @property
    def size(self) -> int:
        return self.t.shape[0]

    @functools.cached_property
    def fm_idx(self) -> torch.Tensor:
        return self.fm_mask.nonzero().squeeze(1)

    def parts(self, **more) -> dict:
        """The batch's tensors and then `more`, as return_parts gives them."""
        return dict(t=self.t, r=self.r, fm_mask=self.fm_mask, y=self.y, eps=self.eps, z_t=self.z_t, v=self.v, **more)


def draw_batch(x: torch.Tensor, y: torch.Tensor, ratio_fm: float, config: TrainConfig, null_class: int,
               generator: torch.Generator | None = None, times: tuple | None = None,
               eps: torch.Tensor | None = None) -> Batch:
    """Times (config.time), noise and label dropout (config.guidance.label_dropout: those rows get null_class), in
    this order from `generator`; times = (t, r, fm_mask) and eps, where given, replace their draws."""
    b, dev, dtype = x.shape[0], x.device, x.dtype
    t, r, fm_mask = sample_times(b, ratio_fm, config.time, generator) if times is None else times
    t, r, fm_mask = t.to(dev, dtype), r.to(dev, dtype), fm_mask.to(dev)
    if eps is None:
        eps = torch.randn(x.shape, generator=generator, dtype=dtype).to(dev)
    y, keep = y.to(dev), None
    if config.guidance.label_dropout > 0:
        keep = (torch.rand(b, generator=generator) >= config.guidance.label_dropout).to(dev)
        y = torch.where(keep, y, torch.full_like(y, null_class))
    z_t = (1 - rows(t, x)) * x + rows(t, x) * eps
    n_fm = int(fm_mask.sum()) if times is not None else int(round(ratio_fm * b))   # no sync for sampled masks
    return Batch(t, r, fm_mask, y, keep, eps, z_t, eps - x, (~fm_mask).nonzero().squeeze(1), n_fm)


def guided_velocity(model: nn.Module, batch: Batch, guidance: GuidanceConfig, null_class: int) -> torch.Tensor:
    """v_cfg = omega v + kappa u(z_t, t, t | y) + (1 - omega - kappa) u(z_t, t, t | null) under no-grad, with the
    online network, on the rows with t in (t_min, t_max) whose label was kept; v elsewhere
    (docs/method.md#training-time-guidance). No pass when omega == 1 and kappa == 0."""
    omega, kappa = float(guidance.omega), float(guidance.kappa)
    v = batch.v
    if omega == 1.0 and kappa == 0.0:
        return v
    inside = (batch.t > guidance.t_min) & (batch.t < guidance.t_max)
    if batch.keep is not None:
        inside = inside & batch.keep
    idx = inside.nonzero().squeeze(1)
    v_cfg = v.clone()
    if idx.numel() == 0:
        return v_cfg
    zz, tt, yy = batch.z_t[idx], batch.t[idx], batch.y[idx]
    with torch.no_grad():
        both = model(torch.cat([zz, zz]), torch.cat([tt, tt]), torch.cat([tt, tt]),
                     torch.cat([yy, torch.full_like(yy, null_class)]))
    u_cond, u_null = both.to(v.dtype).chunk(2)
    v_cfg[idx] = omega * v[idx] + kappa * u_cond + (1.0 - omega - kappa) * u_null
    return v_cfg


def guidance_scale(guidance: GuidanceConfig) -> float:
    """The effective guidance scale omega / (1 - kappa) (logged as cfg_scale)."""
    return float(guidance.omega) / (1.0 - float(guidance.kappa)) if guidance.kappa != 1.0 else math.inf


def meanflow_dudt(model: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                  v: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(u(z, r, t), du/dt) with du/dt the JVP along (dz, dr, dt) = (v, 0, 1), in one forward-mode pass under the
    math attention path. u keeps its graph to the parameters (it is the prediction that gets backpropagated)."""
    def fn(z_, r_, t_):
        return predict(model, z_, r_, t_, y, g)

    with math_attention(model):
        return torch.func.jvp(fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))


def tangent_pass(model: nn.Module, batch: Batch, v_tan: torch.Tensor,
                 g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(u for every row with graph, du/dt along (v_tan, 0, 1) for the r < t rows, detached) in one primal pass by
    alphaflow.tangent, which carries the tangent of the batch's first rows: the r < t rows go first, then u is put
    back in batch order."""
    order = torch.cat([batch.traj_idx, batch.fm_idx])
    ones = torch.ones(batch.traj_idx.numel(), dtype=batch.t.dtype, device=batch.t.device)
    u, du = tangent.dit_jvp(model, batch.z_t[order], batch.r[order], batch.t[order], batch.y[order], v_tan,
                            torch.zeros_like(ones), ones, None if g is None else g[order])
    dtype = batch.z_t.dtype
    return u.to(dtype)[torch.argsort(order)], du.to(dtype)


def per_row_loss(err: torch.Tensor, reduce: str) -> torch.Tensor:
    """The mean or sum (loss.reduce) of each row's elements."""
    flat = err.flatten(1)
    if reduce == "mean":
        return flat.mean(dim=1)
    if reduce == "sum":
        return flat.sum(dim=1)
    raise ValueError(f"loss.reduce: {reduce!r} is not one of mean, sum")


def step_logs(loss: torch.Tensor, per_row: torch.Tensor, batch: Batch, tensors: dict[str, torch.Tensor],
              alpha: float, guidance: GuidanceConfig) -> dict[str, float]:
    """loss, loss_unweighted, the loss's own `tensors`, loss_fm / loss_traj (per group, when present) as floats
    in one host sync; then alpha, ratio_fm and cfg_scale."""
    tensors = {"loss": loss.detach(), "loss_unweighted": per_row.detach().mean(), **tensors}
    if batch.n_fm:
        tensors["loss_fm"] = per_row[batch.fm_mask].detach().mean()
    if batch.n_fm < batch.size:
        tensors["loss_traj"] = per_row[~batch.fm_mask].detach().mean()
    logs = dict(zip(tensors, torch.stack([v.double() for v in tensors.values()]).tolist()))
    logs.update(alpha=alpha, ratio_fm=batch.n_fm / batch.size, cfg_scale=guidance_scale(guidance))
    return logs
