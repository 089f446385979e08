"""Improved MeanFlow (iMF, arXiv 2512.02012): the MeanFlow objective recast as a loss on the instantaneous velocity
(docs/method.md#improved-meanflow-imf), selected by loss.objective: imf.

The network still predicts the average velocity u_theta(z_t, r, t). Training regresses the compound function
    V_theta = u_theta(z_t, r, t) + (t - r) sg(du_theta/dt),  du/dt = JVP of u_theta along (v_theta, 0, 1)   (Eq. 12)
onto the conditional velocity e - x (Eq. 10), where the JVP's tangent v_theta = u_theta(z_t, t, t) is the network's
own instantaneous velocity (the boundary condition u(z, t, t) = v; the paper's Table 1a variant without an extra
v-head), not the high-variance e - x of the original MeanFlow (Eq. 6). On r = t rows V = u, plain flow matching.

Guidance as a condition (guidance.conditioned, Eq. 15-16): each row draws omega ~ p(omega) ~ omega^-beta on
[1, omega_max] and an interval t_min ~ U[0, 0.5], t_max ~ U[0.5, 1] (r = t rows: [0, 1]); the network sees
g = (omega, t_min, t_max); omega' = omega inside the interval and 1 outside; the regression target is
    v_g = (e - x) + (1 - 1/omega') (u(z_t, t, t | y, omega') - u(z_t, t, t | null, 1))       (no-grad)
and the JVP's tangent is the guided instantaneous velocity u(z_t, t, t | y, omega'). Rows whose label was dropped
learn the unconditional velocity (omega' = 1, target e - x). Without guidance.conditioned, the target is the fixed
training-time CFG velocity v_cfg of the other members (guidance.omega, guidance.kappa).

Per-row loss with the adaptive weight (loss.adaptive_p, loss.adaptive_c), as the other members. imf_loss is called
as alpha_flow_loss is (alphaflow/objective.py: loss_for picks between them); the steps they share are in
alphaflow/loss_parts.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from alphaflow import tangent
from alphaflow.config import GuidanceConfig, TrainConfig
from alphaflow.fast_path import FastPath
from alphaflow.loss_parts import (
    Batch,
    draw_batch,
    guided_velocity,
    meanflow_dudt,
    per_row_loss,
    predict,
    rows,
    step_logs,
    tangent_pass,
)
from alphaflow.loss_weights import adaptive_weight
from alphaflow.model import no_guidance


def imf_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: float, ratio_fm: float,
             config: TrainConfig, num_classes: int, generator: torch.Generator | None = None, progress: float = 0.0,
             grad_diagnostics: bool = False, times: tuple | None = None, eps: torch.Tensor | None = None,
             return_parts: bool = False):
    """The minibatch loss and its logs: V_theta against its target with the adaptive weight. Called as
    alpha_flow_loss is; alpha (0 by the config rules), progress and grad_diagnostics do not enter it.
    return_parts=True adds the batch's tensors, v_cfg, weight and imf_predict_and_target's intermediates."""
    if config.loss.objective != "imf":   # the objective is chosen outside the loss: loss_for(config)
        raise ValueError(f"imf_loss: loss.objective is {config.loss.objective!r}; call loss_for(config)")
    batch = draw_batch(x, y, ratio_fm, config, num_classes, generator, times, eps)
    v_cfg = guided_velocity(model, batch, config.guidance, num_classes)
    fast = FastPath.for_kernels(config.kernels).tangent_pass
    parts = imf_predict_and_target(model, batch, v_cfg, config.guidance, num_classes, generator, fast)
    per_row = per_row_loss((parts["V"] - parts["target"]) ** 2, config.loss.reduce)
    w = adaptive_weight(per_row, 1.0, config.loss.adaptive_p, config.loss.adaptive_c)
    loss = (w.detach() * per_row).mean()
    omega = {} if parts["omega_eff"] is None else {"omega_mean": parts["omega_eff"].mean()}
    logs = step_logs(loss, per_row, batch, omega, 0.0, config.guidance)
    if return_parts:
        detached = {k: (p.detach() if isinstance(p, torch.Tensor) else p) for k, p in parts.items()}
        return loss, logs, batch.parts(v_cfg=v_cfg, weight=w.detach(), **detached)
    return loss, logs


def sample_guidance(t: torch.Tensor, fm_mask: torch.Tensor, keep: torch.Tensor | None, guidance: GuidanceConfig,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, omega_eff): g (B, 3) = (omega, t_min, t_max) the network is conditioned on; omega_eff (B,) the scale
    in force at t (omega inside [t_min, t_max], else 1; 1 for rows whose label was dropped)."""
    b = t.shape[0]
    u = torch.rand(b, generator=generator, dtype=torch.float64)
    w_max, beta = float(guidance.omega_max), float(guidance.omega_power)
    if w_max == 1.0:
        omega = torch.ones(b, dtype=torch.float64)
    elif beta == 1.0:   # inverse CDF of p ~ 1/omega: omega = w_max^u
        omega = w_max ** u
    else:               # p ~ omega^-beta: CDF (omega^(1-beta) - 1) / (w_max^(1-beta) - 1)
        omega = (1.0 + u * (w_max ** (1.0 - beta) - 1.0)) ** (1.0 / (1.0 - beta))
    if guidance.random_interval:
        t_min = 0.5 * torch.rand(b, generator=generator, dtype=torch.float64)
        t_max = 0.5 + 0.5 * torch.rand(b, generator=generator, dtype=torch.float64)
    else:
        t_min = torch.full((b,), float(guidance.t_min), dtype=torch.float64)
        t_max = torch.full((b,), float(guidance.t_max), dtype=torch.float64)
    fm = fm_mask.cpu()
    t_min[fm], t_max[fm] = 0.0, 1.0
    if keep is not None:
        omega[~keep.cpu()] = 1.0
    g = torch.stack([omega, t_min, t_max], dim=1).to(t.dtype).to(t.device)
    inside = (t >= g[:, 1]) & (t <= g[:, 2])
    omega_eff = torch.where(inside, g[:, 0], torch.ones_like(g[:, 0]))
    return g, omega_eff


def _boundary_velocity(model: nn.Module, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                       g: torch.Tensor | None) -> torch.Tensor:
    """u(z, t, t | y, g) under no-grad: the network's instantaneous velocity."""
    with torch.no_grad():
        return predict(model, z, t, t, y, g).to(z.dtype)


def _guided_target(model: nn.Module, batch: Batch, g: torch.Tensor, omega_eff: torch.Tensor,
                   null_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_g, the guided instantaneous velocity u(z_t, t, t | y, omega') of every row)."""
    z_t, t, y, v = batch.z_t, batch.t, batch.y, batch.v
    g_tan = g.clone()
    g_tan[:, 0], g_tan[:, 1], g_tan[:, 2] = omega_eff, 0.0, 1.0   # the guided velocity in force at t
    v_c = _boundary_velocity(model, z_t, t, y, g_tan)
    guided = omega_eff > 1.0
    target = v.clone()
    if bool(guided.any()):
        idx = guided.nonzero().squeeze(1)
        v_u = _boundary_velocity(model, z_t[idx], t[idx], torch.full_like(y[idx], null_class), no_guidance(t[idx]))
        target[idx] = v[idx] + rows(1.0 - 1.0 / omega_eff[idx], v_u) * (v_c[idx] - v_u)
    return target, v_c


def _jvp(model: nn.Module, batch: Batch, g: torch.Tensor | None, v_tan: torch.Tensor, fast: bool):
    """(u for all rows with graph, du/dt for the r < t rows, detached) with the tangent (v_tan, 0, 1)."""
    if fast and tangent.supports(model):
        return tangent_pass(model, batch, v_tan, g)
    z, idx = batch.z_t, batch.traj_idx
    _, du = meanflow_dudt(model, z[idx], batch.r[idx], batch.t[idx], batch.y[idx], v_tan,
                          None if g is None else g[idx])
    u = predict(model, z, batch.r, batch.t, batch.y, g)
    return u.to(z.dtype), du.detach().to(z.dtype)


def imf_predict_and_target(model: nn.Module, batch: Batch, v_fixed_cfg: torch.Tensor, guidance: GuidanceConfig,
                           null_class: int, generator: torch.Generator | None,
                           fast: bool) -> dict[str, torch.Tensor]:
    """V_theta (with graph) and its target v_g, with the batch's intermediates (for logs and tests).
    v_fixed_cfg: the target without guidance.conditioned."""
    z_t, r, t, y, idx = batch.z_t, batch.r, batch.t, batch.y, batch.traj_idx
    g = omega_eff = None
    if guidance.conditioned:
        g, omega_eff = sample_guidance(t, batch.fm_mask, batch.keep, guidance, generator)
        target, v_c = _guided_target(model, batch, g, omega_eff, null_class)
        v_tan = v_c[idx]
    else:
        target = v_fixed_cfg
        v_tan = _boundary_velocity(model, z_t[idx], t[idx], y[idx], None) if idx.numel() else batch.v[idx]
    if idx.numel():
        u, dudt = _jvp(model, batch, g, v_tan, fast)
        compound = u.clone()
        compound[idx] = u[idx] + rows(t[idx] - r[idx], u) * dudt
    else:
        u = predict(model, z_t, r, t, y, g).to(z_t.dtype)
        compound, dudt = u, batch.v[:0]
    return dict(V=compound, u=u, target=target.detach(), dudt=dudt, v_tan=v_tan, g=g, omega_eff=omega_eff)
