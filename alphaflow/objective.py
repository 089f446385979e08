"""The alpha-Flow loss family (docs/method.md#objective) with training-time guidance, for any model u(x, r, t, y).

One call = one minibatch loss:
- z_t = (1 - t) x + t eps, v = eps - x; rows with r = t (a fraction ratio_fm) regress to v_cfg.
- r < t rows, by alpha:
  alpha == 1      target v_cfg (trajectory flow matching), no extra network pass; clipped to +-clip as in the
                  official code (loss.clip_alpha1: false leaves it unclipped);
  0 < alpha < 1   target alpha v_cfg + (1 - alpha) sg(u(z_s, r, s)), s = t - alpha (t - r),
                  z_s = z_t - alpha (t - r) v_cfg: one no-grad pass of the online network on those rows only,
                  clipped to +-clip;
  alpha == 0      MeanFlow target v_cfg - (t - r) sg(du/dt), du/dt = JVP along (v_cfg, 0, 1), computed with
                  torch.func.jvp in one pass over the r < t rows whose primal output is the prediction itself;
                  the r = t rows (t - r = 0, target v_cfg) take a plain pass instead; not clipped.
- v_cfg = omega v + kappa u(z_t, t, t | y) + (1 - omega - kappa) u(z_t, t, t | null) under no-grad for rows with
  t inside (t_min, t_max) whose label was kept; v elsewhere (and for rows dropped to the null class, which learn
  the unconditional velocity). No extra pass when omega == 1 and kappa == 0.
- Per-row loss l_i (mean or sum over elements), weight n_i / (sg(l_i) + c)^p with n_i = alpha on the r < t rows
  when 0 < alpha < 1, else 1; then MinSNR on r = t rows (minsnr_gamma > 0) and beta on r < t rows (loss.beta);
  loss = mean_i w_i l_i.

The family's two members are two loss callables with one signature: alpha_flow_loss (here) and imf_loss
(alphaflow/imf.py); loss_for(config) picks one by loss.objective. Their shared steps are in alphaflow/loss_parts.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from alphaflow import tangent
from alphaflow.config import LossConfig, TrainConfig
from alphaflow.fast_path import FastPath
from alphaflow.imf import imf_loss
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
from alphaflow.loss_weights import adaptive_weight, beta_weight, minsnr_weight, progress_s
from alphaflow.timesteps import expected_one_minus_dt


def alpha_flow_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: float, ratio_fm: float,
                    config: TrainConfig, num_classes: int, generator: torch.Generator | None = None,
                    progress: float = 0.0, grad_diagnostics: bool = False, times: tuple | None = None,
                    eps: torch.Tensor | None = None, return_parts: bool = False):
    """The minibatch loss and its logs.

    config: the TrainConfig (uses config.time, .loss, .guidance, .kernels). progress: i / T in [0, 1] (for beta).
    grad_diagnostics: also log grad_cos, the cosine between the parameter gradients of L_TFM and L_TCc.
    times = (t, r, fm_mask) and eps override the random draws; return_parts=True adds a third result, a dict of
    the batch's tensors (t, r, fm_mask, y, eps, z_t, v, v_cfg, u, target, weight), for tests and probes."""
    if config.loss.objective != "alpha-flow":   # the objective is chosen outside the loss: loss_for(config)
        raise ValueError(f"alpha_flow_loss: loss.objective is {config.loss.objective!r}; call loss_for(config)")
    alpha = min(max(float(alpha), 0.0), 1.0)
    batch = draw_batch(x, y, ratio_fm, config, num_classes, generator, times, eps)
    v_cfg = guided_velocity(model, batch, config.guidance, num_classes)
    fast = FastPath.for_kernels(config.kernels).tangent_pass
    u, target = predict_and_target(model, batch, v_cfg, alpha, config.loss, fast)
    per_row = per_row_loss((u - target) ** 2, config.loss.reduce)
    w, beta_mean = alpha_flow_weights(per_row, batch, alpha, config, progress)
    loss = (w.detach() * per_row).mean()

    # the paper's decomposition |u - u_tgt|^2 = L_TFM + L_TCc + const, logged without backprop
    l_tfm = per_row_loss((u - v_cfg) ** 2, config.loss.reduce).mean()
    l_tcc = per_row_loss(2 * (v_cfg - target) * u, config.loss.reduce).mean()
    own = {"beta_mean": beta_mean, "l_tfm": l_tfm.detach(), "l_tcc": l_tcc.detach()}
    logs = step_logs(loss, per_row, batch, own, alpha, config.guidance)
    if grad_diagnostics:
        cos = gradient_cosine(model, l_tfm, l_tcc)
        if math.isfinite(cos):   # undefined while L_TCc has no gradient (alpha = 1)
            logs["grad_cos"] = cos
    if return_parts:
        return loss, logs, batch.parts(v_cfg=v_cfg, u=u.detach(), target=target, weight=w.detach())
    return loss, logs


LOSSES: dict[str, Callable] = {"alpha-flow": alpha_flow_loss, "imf": imf_loss}


def loss_for(config: TrainConfig) -> Callable:
    """The loss callable of config.loss.objective (alpha_flow_loss or imf_loss, called alike)."""
    return LOSSES[config.loss.objective]


def predict_and_target(model: nn.Module, batch: Batch, v_cfg: torch.Tensor, alpha: float, loss: LossConfig,
                       fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(u with graph, detached target) for the whole batch; v_cfg on the r = t rows, by alpha on the r < t rows.
    fast: the alpha = 0 JVP through alphaflow.tangent where the model is a DiT (else torch.func.jvp)."""
    if alpha == 0.0:
        return meanflow_target(model, batch, v_cfg, fast)
    target = alpha_target(model, batch, v_cfg, alpha, loss)   # its no-grad pass first, then the prediction
    return predict(model, batch.z_t, batch.r, batch.t, batch.y).to(batch.z_t.dtype), target.detach()


def alpha_target(model: nn.Module, batch: Batch, v_cfg: torch.Tensor, alpha: float, loss: LossConfig) -> torch.Tensor:
    """0 < alpha <= 1: alpha v_cfg + (1 - alpha) sg(u(z_s, r, s)) on the r < t rows, with s = t - alpha (t - r) and
    z_s = z_t - alpha (t - r) v_cfg, clipped to +-loss.clip (at alpha = 1 only with loss.clip_alpha1)."""
    idx, clip = batch.traj_idx, float(loss.clip)
    if not idx.numel() or (alpha == 1.0 and not loss.clip_alpha1):
        return v_cfg
    target = v_cfg.clone()
    if alpha == 1.0:   # the official alpha-Flow code clips every r < t target, here v_cfg itself
        target[idx] = v_cfg[idx].clamp(-clip, clip)
        return target
    dt = (batch.t - batch.r)[idx]
    s = batch.t[idx] - alpha * dt
    z_s = batch.z_t[idx] - rows(alpha * dt, batch.z_t) * v_cfg[idx]
    with torch.no_grad():
        u_s = model(z_s, batch.r[idx], s, batch.y[idx]).to(batch.z_t.dtype)
    target[idx] = (alpha * v_cfg[idx] + (1 - alpha) * u_s).clamp(-clip, clip)
    return target


def meanflow_target(model: nn.Module, batch: Batch, v_cfg: torch.Tensor,
                    fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha = 0: (u, v_cfg - (t - r) sg(du/dt)), du/dt along (v_cfg, 0, 1). Every row goes through exactly one
    pass with grad: with `fast`, one primal pass of all rows carrying the r < t rows' tangent; else the
    torch.func.jvp pass (whose primal output is the prediction) on the r < t rows and a plain pass on the r = t
    rows, whose du/dt would be multiplied by t - r = 0 anyway (on CPU forward-mode AD costs ~3.5 forwards, so this
    saves ~25% at ratio_fm 0.5)."""
    z, r, t, y, idx = batch.z_t, batch.r, batch.t, batch.y, batch.traj_idx
    dtype = z.dtype
    if fast and idx.numel() and tangent.supports(model):
        u, dudt = tangent_pass(model, batch, v_cfg[idx])
        target = v_cfg.clone()
        target[idx] = v_cfg[idx] - rows(t[idx] - r[idx], z) * dudt
        return u, target.detach()
    if idx.numel() == batch.size:
        u, dudt = meanflow_dudt(model, z, r, t, y, v_cfg)
        return u.to(dtype), (v_cfg - rows(t - r, z) * dudt.detach().to(dtype)).detach()
    u = torch.empty_like(z)
    target = v_cfg.clone()
    if idx.numel():
        zi, ri, ti, vi = z[idx], r[idx], t[idx], v_cfg[idx]
        u_traj, dudt = meanflow_dudt(model, zi, ri, ti, y[idx], vi)
        u = u.index_put((idx,), u_traj.to(dtype))
        target[idx] = vi - rows(ti - ri, zi) * dudt.detach().to(dtype)
    fm = batch.fm_idx
    u = u.index_put((fm,), model(z[fm], r[fm], t[fm], y[fm]).to(dtype))
    return u, target.detach()


def alpha_flow_weights(per_row: torch.Tensor, batch: Batch, alpha: float, config: TrainConfig,
                       progress: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w, beta's mean over the r < t rows; 1 when off): the adaptive weight n_i / (sg(l_i) + c)^p with n_i = alpha
    on the r < t rows when 0 < alpha < 1, else 1; then MinSNR on the r = t rows (loss.minsnr_gamma > 0) and
    beta on the r < t rows (loss.beta, at progress = i / T)."""
    lc, fm_mask, dtype = config.loss, batch.fm_mask, batch.t.dtype
    traj = ~fm_mask
    n = torch.ones(batch.size, dtype=dtype, device=batch.t.device)
    if 0.0 < alpha < 1.0:
        n[traj] = alpha
    w = adaptive_weight(per_row, n, lc.adaptive_p, lc.adaptive_c)
    if lc.minsnr_gamma > 0 and fm_mask.any():
        w = torch.where(fm_mask, w * minsnr_weight(batch.t, lc.minsnr_gamma), w)
    beta_mean = torch.ones((), dtype=dtype, device=batch.t.device)   # stacked with the other logs on the device
    if lc.beta and traj.any():
        lam = 1.0 / expected_one_minus_dt(config.time)
        beta = beta_weight(batch.t - batch.r, progress_s(progress, lc.beta_k), lam)
        w = torch.where(traj, w * beta, w)
        beta_mean = beta[traj].mean()
    return w, beta_mean


def gradient_cosine(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(grad_theta a, grad_theta b), keeping the graph for the main backward."""
    params = [p for p in model.parameters() if p.requires_grad]
    ga = torch.autograd.grad(a, params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(b, params, retain_graph=True, allow_unused=True)
    fa = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(ga, params)])
    fb = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gb, params)])
    denom = fa.norm() * fb.norm()
    return float((fa @ fb) / denom) if denom > 0 else math.nan
