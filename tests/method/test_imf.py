"""Improved MeanFlow (iMF, arXiv 2512.02012) as a member of the objective family.

The objective against its formula written here independently (float64, torch.func.jvp with the explicit-softmax
attention), its JVP against central finite differences, the guidance-condition draws, the config rules, and a
guidance-conditioned model that serves every scale. The 2-D toy where it learns is proof 7 in test_method_toy.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from alphaflow.config import ConfigError, apply_overrides
from alphaflow.imf import sample_guidance
from alphaflow.model import build_model, math_attention, no_guidance
from alphaflow.objective import imf_loss
from alphaflow.presets import get_preset
from alphaflow.train_state import TrainState

SHAPE = (1, 8, 8)
NULL = 10


def _cfg(conditioned: bool, kernels: str = "reference", **extra):
    return apply_overrides(get_preset("imf-B2"), {
        "model.size": "micro", "model.patch_size": 2, "batch_size": 12, "precision": "fp32", "kernels": kernels,
        "guidance.conditioned": conditioned, "guidance.label_dropout": 0.25, **extra})


def _model(cfg):
    torch.manual_seed(0)
    m = build_model(cfg.model, 1, (8, 8), 10, guidance_conditioned=cfg.guidance.conditioned).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # adaLN-Zero starts as the identity: perturb so every layer matters
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return m


def _batch(b: int = 12):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(b, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (b,), generator=g)
    t = torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(b, generator=g, dtype=torch.float64)
    fm = torch.zeros(b, dtype=torch.bool)
    fm[::2] = True
    r[fm] = t[fm]
    eps = torch.randn(b, *SHAPE, generator=g, dtype=torch.float64)
    return x, y, (t, r, fm), eps


def _run(cfg, model, seed=3):
    x, y, times, eps = _batch()
    return imf_loss(model, x, y, alpha=0.0, ratio_fm=0.5, config=cfg, num_classes=10,
                           generator=torch.Generator().manual_seed(seed), times=times, eps=eps, return_parts=True)


@pytest.mark.parametrize("conditioned", [False, True])
def test_imf_loss_matches_its_formula_float64(conditioned):
    cfg = _cfg(conditioned)
    model = _model(cfg)
    loss, logs, parts = _run(cfg, model)
    t, r, fm, y, z = parts["t"], parts["r"], parts["fm_mask"], parts["y"], parts["z_t"]
    v = parts["eps"] - (z - t.view(-1, 1, 1, 1) * parts["eps"]) / (1 - t.view(-1, 1, 1, 1))   # e - x from z_t
    assert torch.allclose(v, parts["v"], atol=1e-10)
    def rows(a):
        return a.view(-1, 1, 1, 1)

    dropped = y == NULL
    if conditioned:
        g = parts["g"]
        omega, t_min, t_max = g[:, 0], g[:, 1], g[:, 2]
        # Eq. 15-16: the interval decides where the scale is in force; r = t rows use [0, 1]; dropped rows omega 1
        assert torch.all(t_min[fm] == 0) and torch.all(t_max[fm] == 1) and torch.all(omega[dropped] == 1)
        w_eff = torch.where((t >= t_min) & (t <= t_max), omega, torch.ones_like(omega))
        g_t = torch.stack([w_eff, torch.zeros_like(t), torch.ones_like(t)], 1)
        with torch.no_grad():
            v_c = model(z, t, t, y, g_t)
            v_u = model(z, t, t, torch.full_like(y, NULL), no_guidance(t))
        target = v + rows(1 - 1 / w_eff) * (v_c - v_u)
        tangent_v, g_net = v_c, g
    else:
        with torch.no_grad():
            tangent_v = model(z, t, t, y)
        target, g_net = v, None
    assert torch.allclose(parts["target"], target, atol=1e-10, rtol=0)

    def u_of(z_, r_, t_):
        return model(z_, r_, t_, y, g_net)

    with math_attention(model):
        u, dudt = torch.func.jvp(u_of, (z, r, t), (tangent_v, torch.zeros_like(r), torch.ones_like(t)))
    V = u + rows(t - r) * dudt      # Eq. 12; on r = t rows t - r = 0 and V = u
    assert cfg.loss.reduce == "sum"    # the preset's (the official code's) summed error
    per_row = ((V - target) ** 2).flatten(1).sum(1).detach()
    w = 1.0 / (per_row + cfg.loss.adaptive_c) ** cfg.loss.adaptive_p
    assert torch.allclose(parts["V"], V.detach(), atol=1e-10, rtol=0)
    assert abs(float(loss.detach()) - float((w * per_row).mean())) <= 1e-10
    assert math.isclose(logs["loss"], float(loss.detach()), rel_tol=1e-12)


def test_imf_jvp_matches_finite_differences():
    cfg = _cfg(True)
    model = _model(cfg)
    _, _, parts = _run(cfg, model)
    traj = (~parts["fm_mask"]).nonzero().squeeze(1)
    z, r, t, y, g = (parts[k][traj] for k in ("z_t", "r", "t", "y", "g"))
    d = parts["v_tan"]
    h = 1e-6
    with torch.no_grad():
        fd = (model(z + h * d, r, t + h, y, g) - model(z - h * d, r, t - h, y, g)) / (2 * h)
    assert float((parts["dudt"] - fd).abs().max() / fd.abs().max()) <= 1e-6


@pytest.mark.parametrize("conditioned", [False, True])
def test_imf_fast_path_equals_reference(conditioned):
    res = {}
    for kernels in ("reference", "fast"):
        cfg = _cfg(conditioned, kernels)
        model = _model(cfg).float()
        x, y, (t, r, fm), eps = _batch()
        loss, _, parts = imf_loss(model, x.float(), y, alpha=0.0, ratio_fm=0.5, config=cfg, num_classes=10,
                                         generator=torch.Generator().manual_seed(3),
                                         times=(t.float(), r.float(), fm), eps=eps.float(), return_parts=True)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        res[kernels] = (float(loss), parts["V"], torch.cat([g_.flatten() for g_ in grads]))
    (l0, v0, g0), (l1, v1, g1) = res["reference"], res["fast"]
    assert abs(l1 - l0) <= 1e-5 * abs(l0)
    assert float((v1 - v0).abs().max() / v0.abs().max()) <= 1e-5
    assert float((g1 - g0).norm() / g0.norm()) <= 1e-5


def test_guidance_draws_follow_their_distributions():
    b = 200_000
    t = torch.rand(b)
    fm = torch.zeros(b, dtype=torch.bool)
    fm[: b // 4] = True
    cfg = _cfg(True).guidance
    g, w_eff = sample_guidance(t, fm, None, cfg, torch.Generator().manual_seed(0))
    omega = g[:, 0].double()
    assert float(omega.min()) >= 1.0 and float(omega.max()) <= cfg.omega_max
    # p(omega) ~ 1/omega on [1, 8]: log(omega) is uniform on [0, log 8]
    assert abs(float(omega.log().mean()) - math.log(8) / 2) < 0.01
    rest = ~fm
    assert abs(float(g[rest, 1].mean()) - 0.25) < 0.005 and abs(float(g[rest, 2].mean()) - 0.75) < 0.005
    inside = (t >= g[:, 1]) & (t <= g[:, 2])
    assert torch.equal(w_eff, torch.where(inside, g[:, 0], torch.ones_like(t)))
    power2 = _cfg(True, **{"guidance.omega_power": 2.0}).guidance
    g2, _ = sample_guidance(t, fm, None, power2, torch.Generator().manual_seed(0))
    # p ~ omega^-2 on [1, 8]: E[omega] = log(8) / (1 - 1/8)
    assert abs(float(g2[:, 0].double().mean()) - math.log(8) / (7 / 8)) < 0.02


def test_imf_config_rules_are_one_line_errors():
    with pytest.raises(ConfigError, match="alpha.kind: constant"):
        apply_overrides(get_preset("imf-B2"), {"alpha.kind": "sigmoid"})
    with pytest.raises(ConfigError, match="needs loss.objective: imf"):
        apply_overrides(get_preset("tiny-cpu"), {"guidance.conditioned": True})
    with pytest.raises(ConfigError, match="leave guidance.omega 1"):
        apply_overrides(get_preset("imf-B2"), {"guidance.kappa": 0.5})
    with pytest.raises(KeyError, match="meanflow-minsnr-beta-B4"):
        get_preset("improved-meanflow-B4")


def test_one_conditioned_model_serves_every_scale():
    cfg = apply_overrides(_cfg(True), {"total_steps": 20})
    state = TrainState(cfg, SHAPE, 10)
    x = torch.randn(12, *SHAPE)
    y = torch.randint(0, 10, (12,))
    for _ in range(3):
        state.train_step(x, y)
    with torch.no_grad():   # a few steps barely move the zero-initialised output layer: perturb it
        for p in state.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    noise = torch.randn(6, *SHAPE)
    outs = {}
    for w in (1.0, 3.0):
        state.cfg = apply_overrides(cfg, {"sampling.guidance": w, "sampling.guidance_t_min": 0.2})
        outs[w] = state.sample(noise, y[:6], nfe=1, ema=False)
        g = torch.tensor([[w, 0.2, 1.0]]).expand(6, 3)
        with torch.no_grad():
            direct = noise - state.model(noise, torch.zeros(6), torch.ones(6), y[:6], g)
        assert torch.allclose(outs[w], direct, atol=1e-6)   # sampling passes the scale and interval through
    assert float((outs[1.0] - outs[3.0]).abs().max()) > 1e-3   # the scale is an input, not baked in
