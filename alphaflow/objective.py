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
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from alphaflow import tangent
from alphaflow.model import math_attention
from alphaflow.timesteps import expected_one_minus_dt, sample_times
from alphaflow.loss_weights import adaptive_weight, beta_weight, minsnr_weight, progress_s


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast against `like`."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _per_row(err: torch.Tensor, reduce: str) -> torch.Tensor:
    flat = err.flatten(1)
    if reduce == "mean":
        return flat.mean(dim=1)
    if reduce == "sum":
        return flat.sum(dim=1)
    raise ValueError(f"loss.reduce: {reduce!r} is not one of mean, sum")


def guided_velocity(model: nn.Module, z_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
                    null_class: int, guidance, keep: torch.Tensor | None = None) -> torch.Tensor:
    """v_cfg (docs/method.md#training-time-guidance), under no-grad, with the online network. `keep`: rows whose label was not dropped."""
    omega, kappa = float(guidance.omega), float(guidance.kappa)
    if omega == 1.0 and kappa == 0.0:
        return v
    inside = (t > guidance.t_min) & (t < guidance.t_max)
    if keep is not None:
        inside = inside & keep
    idx = inside.nonzero().squeeze(1)
    v_cfg = v.clone()
    if idx.numel() == 0:
        return v_cfg
    zz, tt, yy = z_t[idx], t[idx], y[idx]
    with torch.no_grad():
        both = model(torch.cat([zz, zz]), torch.cat([tt, tt]), torch.cat([tt, tt]),
                     torch.cat([yy, torch.full_like(yy, null_class)]))
    u_cond, u_null = both.to(v.dtype).chunk(2)
    v_cfg[idx] = omega * v[idx] + kappa * u_cond + (1.0 - omega - kappa) * u_null
    return v_cfg


def meanflow_dudt(model: nn.Module, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                  v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u(z, r, t), du/dt) with du/dt the JVP along (dz, dr, dt) = (v, 0, 1), in one forward-mode pass under the
    math attention path. u keeps its graph to the parameters (it is the prediction that gets backpropagated)."""
    def fn(z_, r_, t_):
        return model(z_, r_, t_, y)

    with math_attention(model):
        return torch.func.jvp(fn, (z, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))


def meanflow_fast(model: nn.Module, z_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                  v_cfg: torch.Tensor, traj_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The alpha = 0 (u, target) through one primal pass of all rows with the tangent of the r < t rows carried
    alongside (alphaflow.tangent): the rows are put r < t first, then back in order."""
    dtype = z_t.dtype
    n, b = traj_idx.numel(), z_t.shape[0]
    fm = torch.ones(b, dtype=torch.bool, device=z_t.device)
    fm[traj_idx] = False
    order = torch.cat([traj_idx, fm.nonzero().squeeze(1)])
    inverse = torch.argsort(order)
    ones = torch.ones(n, dtype=t.dtype, device=t.device)
    u_o, dudt = tangent.dit_jvp(model, z_t[order], r[order], t[order], y[order], v_cfg[traj_idx],
                                torch.zeros_like(ones), ones)
    target = v_cfg.clone()
    target[traj_idx] = v_cfg[traj_idx] - _rows(t[traj_idx] - r[traj_idx], z_t) * dudt.to(dtype)
    return u_o.to(dtype)[inverse], target.detach()


def predict_and_target(model: nn.Module, z_t: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                       v_cfg: torch.Tensor, traj_idx: torch.Tensor, alpha: float, clip: float,
                       clip_alpha1: bool = True, fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(u with graph, detached target) for the whole batch; traj_idx: the rows with r < t.
    fast: the alpha = 0 JVP through alphaflow.tangent where the model is a DiT (else torch.func.jvp)."""
    dtype = z_t.dtype
    dt = t - r
    if alpha == 0.0 and fast and traj_idx.numel() and tangent.supports(model):
        return meanflow_fast(model, z_t, r, t, y, v_cfg, traj_idx)
    if alpha == 0.0:
        # every row goes through exactly one pass with grad: the JVP pass (whose primal output is the
        # prediction) on the r < t rows, a plain pass on the r = t rows, whose du/dt would be multiplied by
        # t - r = 0 anyway. On CPU, forward-mode AD costs ~3.5 forwards, so this saves ~25% at ratio_fm 0.5.
        n = z_t.shape[0]
        if traj_idx.numel() == n:
            u, dudt = meanflow_dudt(model, z_t, r, t, y, v_cfg)
            return u.to(dtype), (v_cfg - _rows(dt, z_t) * dudt.detach().to(dtype)).detach()
        fm_idx = torch.ones(n, dtype=torch.bool, device=z_t.device)
        fm_idx[traj_idx] = False
        fm_idx = fm_idx.nonzero().squeeze(1)
        u = torch.empty_like(z_t)
        target = v_cfg.clone()
        if traj_idx.numel():
            zi, ri, ti, vi = z_t[traj_idx], r[traj_idx], t[traj_idx], v_cfg[traj_idx]
            u_traj, dudt = meanflow_dudt(model, zi, ri, ti, y[traj_idx], vi)
            u = u.index_put((traj_idx,), u_traj.to(dtype))
            target[traj_idx] = vi - _rows(ti - ri, zi) * dudt.detach().to(dtype)
        u = u.index_put((fm_idx,), model(z_t[fm_idx], r[fm_idx], t[fm_idx], y[fm_idx]).to(dtype))
        return u, target.detach()
    target = v_cfg
    if alpha == 1.0 and clip_alpha1 and traj_idx.numel():
        # the official alpha-Flow code clips every r < t target, here v_cfg itself; the r = t rows stay unclipped
        target = v_cfg.clone()
        target[traj_idx] = v_cfg[traj_idx].clamp(-clip, clip)
    if alpha < 1.0 and traj_idx.numel():
        s = t[traj_idx] - alpha * dt[traj_idx]
        z_s = z_t[traj_idx] - _rows(alpha * dt[traj_idx], z_t) * v_cfg[traj_idx]
        with torch.no_grad():
            u_s = model(z_s, r[traj_idx], s, y[traj_idx]).to(dtype)
        target = v_cfg.clone()
        target[traj_idx] = (alpha * v_cfg[traj_idx] + (1 - alpha) * u_s).clamp(-clip, clip)
    u = model(z_t, r, t, y).to(dtype)
    return u, target.detach()


def alpha_flow_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, alpha: float, ratio_fm: float, cfg,
                    num_classes: int, generator: torch.Generator | None = None, progress: float = 0.0,
                    grad_diagnostics: bool = False, times: tuple | None = None, eps: torch.Tensor | None = None,
                    return_parts: bool = False):
    """The minibatch loss and its logs.

    cfg: a TrainConfig (uses cfg.time, cfg.loss, cfg.guidance). progress: i / T in [0, 1] (for beta).
    grad_diagnostics: also log grad_cos, the cosine between the parameter gradients of L_TFM and L_TCc.
    times = (t, r, fm_mask) and eps override the random draws; return_parts=True adds a third result, a dict of
    the batch's tensors (t, r, fm_mask, y, eps, z_t, v, v_cfg, u, target, weight), for tests and probes."""
    alpha = min(max(float(alpha), 0.0), 1.0)
    b = x.shape[0]
    dev, dtype = x.device, x.dtype
    if times is None:
        t, r, fm_mask = sample_times(b, ratio_fm, cfg.time, generator)
    else:
        t, r, fm_mask = times
    t, r, fm_mask = t.to(dev, dtype), r.to(dev, dtype), fm_mask.to(dev)
    if eps is None:
        eps = torch.randn(x.shape, generator=generator, dtype=dtype).to(dev)
    y = y.to(dev)
    keep = None
    if cfg.guidance.label_dropout > 0:
        keep = (torch.rand(b, generator=generator) >= cfg.guidance.label_dropout).to(dev)
        y = torch.where(keep, y, torch.full_like(y, num_classes))

    z_t = (1 - _rows(t, x)) * x + _rows(t, x) * eps
    v = eps - x
    v_cfg = guided_velocity(model, z_t, t, v, y, num_classes, cfg.guidance, keep)
    if cfg.loss.objective == "imf":
        return _imf_loss(model, z_t, r, t, y, v, v_cfg, fm_mask, keep, cfg, num_classes, generator, eps,
                         return_parts)
    dt = t - r
    traj = ~fm_mask
    traj_idx = traj.nonzero().squeeze(1)

    u, target = predict_and_target(model, z_t, r, t, y, v_cfg, traj_idx, alpha, float(cfg.loss.clip),
                                   bool(cfg.loss.clip_alpha1), fast=cfg.kernels != "reference")

    per_row = _per_row((u - target) ** 2, cfg.loss.reduce)
    n = torch.ones(b, dtype=dtype, device=dev)
    if 0.0 < alpha < 1.0:
        n[traj] = alpha
    w = adaptive_weight(per_row, n, cfg.loss.adaptive_p, cfg.loss.adaptive_c)
    if cfg.loss.minsnr_gamma > 0 and fm_mask.any():
        w = torch.where(fm_mask, w * minsnr_weight(t, cfg.loss.minsnr_gamma), w)
    beta_mean = torch.ones((), dtype=dtype)
    if cfg.loss.beta and traj.any():
        lam = 1.0 / expected_one_minus_dt(cfg.time)
        beta = beta_weight(dt, progress_s(progress, cfg.loss.beta_k), lam)
        w = torch.where(traj, w * beta, w)
        beta_mean = beta[traj].mean()
    loss = (w.detach() * per_row).mean()

    # the paper's decomposition |u - u_tgt|^2 = L_TFM + L_TCc + const, logged without backprop
    l_tfm = _per_row((u - v_cfg) ** 2, cfg.loss.reduce).mean()
    l_tcc = _per_row(2 * (v_cfg - target) * u, cfg.loss.reduce).mean()
    n_fm = int(fm_mask.sum()) if times is not None else int(round(ratio_fm * b))   # no sync for sampled masks
    tensors = {
        "loss": loss.detach(),
        "loss_unweighted": per_row.detach().mean(),
        "beta_mean": beta_mean,
        "l_tfm": l_tfm.detach(),
        "l_tcc": l_tcc.detach(),
    }
    if n_fm:
        tensors["loss_fm"] = per_row[fm_mask].detach().mean()
    if n_fm < b:
        tensors["loss_traj"] = per_row[traj].detach().mean()
    logs = dict(zip(tensors, torch.stack([v.double() for v in tensors.values()]).tolist()))   # one host sync
    logs.update(alpha=alpha, ratio_fm=n_fm / b, cfg_scale=cfg_scale(cfg.guidance))
    if grad_diagnostics:
        cos = gradient_cosine(model, l_tfm, l_tcc)
        if math.isfinite(cos):   # undefined while L_TCc has no gradient (alpha = 1)
            logs["grad_cos"] = cos
    if return_parts:
        parts = dict(t=t, r=r, fm_mask=fm_mask, y=y, eps=eps, z_t=z_t, v=v, v_cfg=v_cfg, u=u.detach(),
                     target=target, weight=w.detach())
        return loss, logs, parts
    return loss, logs


def _imf_loss(model, z_t, r, t, y, v, v_cfg, fm_mask, keep, cfg, num_classes, generator, eps, return_parts):
    """The Improved MeanFlow member (alphaflow/imf.py): loss on V_theta against v_g, with its logs."""
    from alphaflow.imf import imf_predict_and_target, imf_row_losses

    parts = imf_predict_and_target(model, z_t, r, t, y, v, v_cfg, fm_mask, keep, cfg, num_classes, generator,
                                   fast=cfg.kernels != "reference")
    per_row, w = imf_row_losses(parts, cfg, _per_row)
    loss = (w.detach() * per_row).mean()
    b = z_t.shape[0]
    n_fm = int(fm_mask.sum())
    tensors = {"loss": loss.detach(), "loss_unweighted": per_row.detach().mean()}
    if n_fm:
        tensors["loss_fm"] = per_row[fm_mask].detach().mean()
    if n_fm < b:
        tensors["loss_traj"] = per_row[~fm_mask].detach().mean()
    if parts["omega_eff"] is not None:
        tensors["omega_mean"] = parts["omega_eff"].mean()
    logs = dict(zip(tensors, torch.stack([v_.double() for v_ in tensors.values()]).tolist()))
    logs.update(alpha=0.0, ratio_fm=n_fm / b, cfg_scale=cfg_scale(cfg.guidance))
    if return_parts:
        out = dict(t=t, r=r, fm_mask=fm_mask, y=y, eps=eps, z_t=z_t, v=v, v_cfg=v_cfg, weight=w.detach(),
                   **{k: (val.detach() if isinstance(val, torch.Tensor) else val) for k, val in parts.items()})
        return loss, logs, out
    return loss, logs


def cfg_scale(guidance) -> float:
    """The effective guidance scale omega / (1 - kappa)."""
    return float(guidance.omega) / (1.0 - float(guidance.kappa)) if guidance.kappa != 1.0 else math.inf


def gradient_cosine(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(grad_theta a, grad_theta b), keeping the graph for the main backward."""
    params = [p for p in model.parameters() if p.requires_grad]
    ga = torch.autograd.grad(a, params, retain_graph=True, allow_unused=True)
    gb = torch.autograd.grad(b, params, retain_graph=True, allow_unused=True)
    fa = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(ga, params)])
    fb = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gb, params)])
    denom = fa.norm() * fb.norm()
    return float((fa @ fb) / denom) if denom > 0 else math.nan
