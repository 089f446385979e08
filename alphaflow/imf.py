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

Per-row loss with the adaptive weight (loss.adaptive_p, loss.adaptive_c), as the other members.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from alphaflow import tangent
from alphaflow.loss_weights import adaptive_weight
from alphaflow.model import no_guidance


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def sample_guidance(t: torch.Tensor, fm_mask: torch.Tensor, keep: torch.Tensor | None, guidance,
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
        return (model(z, t, t, y) if g is None else model(z, t, t, y, g)).to(z.dtype)


def _jvp(model: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
         g: torch.Tensor | None, v_tan: torch.Tensor, traj_idx: torch.Tensor, fast: bool):
    """(u for all rows with graph, du/dt for the traj rows, detached) with the tangent (v_tan, 0, 1)."""
    n = traj_idx.numel()
    ones = torch.ones(n, dtype=t.dtype, device=t.device)
    if fast and tangent.supports(model):
        b = z.shape[0]
        fm = torch.ones(b, dtype=torch.bool, device=z.device)
        fm[traj_idx] = False
        order = torch.cat([traj_idx, fm.nonzero().squeeze(1)])
        u_o, du = tangent.dit_jvp(model, z[order], r[order], t[order], y[order], v_tan,
                                  torch.zeros_like(ones), ones, None if g is None else g[order])
        return u_o.to(z.dtype)[torch.argsort(order)], du.to(z.dtype)
    from alphaflow.model import math_attention

    gi = None if g is None else g[traj_idx]

    def fn(z_, r_, t_):
        return model(z_, r_, t_, y[traj_idx]) if gi is None else model(z_, r_, t_, y[traj_idx], gi)

    with math_attention(model):
        _, du = torch.func.jvp(fn, (z[traj_idx], r[traj_idx], t[traj_idx]), (v_tan, torch.zeros_like(ones), ones))
    u = model(z, r, t, y) if g is None else model(z, r, t, y, g)
    return u.to(z.dtype), du.detach().to(z.dtype)


def imf_predict_and_target(model: nn.Module, z_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                           v: torch.Tensor, v_fixed_cfg: torch.Tensor, fm_mask: torch.Tensor,
                           keep: torch.Tensor | None, cfg, null_class: int, generator: torch.Generator | None,
                           fast: bool) -> dict[str, torch.Tensor]:
    """V_theta (with graph) and its target v_g, with the batch's intermediates (for logs and tests)."""
    traj_idx = (~fm_mask).nonzero().squeeze(1)
    g = omega_eff = None
    if cfg.guidance.conditioned:
        g, omega_eff = sample_guidance(t, fm_mask, keep, cfg.guidance, generator)
        g_tan = g.clone()
        g_tan[:, 0], g_tan[:, 1], g_tan[:, 2] = omega_eff, 0.0, 1.0   # the guided velocity in force at t
        v_c = _boundary_velocity(model, z_t, t, y, g_tan)
        guided = omega_eff > 1.0
        target = v.clone()
        if bool(guided.any()):
            idx = guided.nonzero().squeeze(1)
            v_u = _boundary_velocity(model, z_t[idx], t[idx], torch.full_like(y[idx], null_class),
                                     no_guidance(t[idx]))
            target[idx] = v[idx] + _rows(1.0 - 1.0 / omega_eff[idx], v_u) * (v_c[idx] - v_u)
        v_tan = v_c[traj_idx]
    else:
        target = v_fixed_cfg
        v_tan = _boundary_velocity(model, z_t[traj_idx], t[traj_idx], y[traj_idx], None) if traj_idx.numel() \
            else v[traj_idx]
    if traj_idx.numel():
        u, dudt = _jvp(model, z_t, r, t, y, g, v_tan, traj_idx, fast)
        compound = u.clone()
        compound[traj_idx] = u[traj_idx] + _rows(t[traj_idx] - r[traj_idx], u) * dudt
    else:
        u = (model(z_t, r, t, y) if g is None else model(z_t, r, t, y, g)).to(z_t.dtype)
        compound, dudt = u, v[:0]
    return dict(V=compound, u=u, target=target.detach(), dudt=dudt, v_tan=v_tan, g=g, omega_eff=omega_eff)


def imf_row_losses(parts: dict[str, torch.Tensor], cfg, reduce) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row squared error of V against the target, adaptive weights)."""
    per_row = reduce((parts["V"] - parts["target"]) ** 2, cfg.loss.reduce)
    return per_row, adaptive_weight(per_row, 1.0, cfg.loss.adaptive_p, cfg.loss.adaptive_c)
