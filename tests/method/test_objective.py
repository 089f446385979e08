"""Proofs 1-4 and 8 of the alpha-Flow objective, on a tiny DiT in float64."""

import pytest
import torch

from alphaflow.config import GuidanceConfig, LossConfig, ModelConfig, TrainConfig
from alphaflow.model import build_model, math_attention
from alphaflow.objective import alpha_flow_loss, meanflow_dudt

torch.set_num_threads(1)
NUM_CLASSES = 3


class CountingModel(torch.nn.Module):
    """Counts forward calls of the wrapped network."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x, r, t, y):
        self.calls += 1
        return self.inner(x, r, t, y)


def tiny_dit(seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(size="micro", patch_size=2), 1, 8, NUM_CLASSES).double()
    with torch.no_grad():   # leave the zero init: a trained-looking network with non-trivial du/dt
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch(n=6, seed=1, fm_rows=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.15
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    fm = torch.zeros(n, dtype=torch.bool)
    fm[torch.randperm(n, generator=g)[:fm_rows]] = True
    r = torch.where(fm, t, r)
    eps = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, y, (t, r, fm), eps


def config(**guidance):
    cfg = TrainConfig()
    cfg.guidance = GuidanceConfig(label_dropout=0.0, **guidance)
    return cfg


def run(model, alpha, cfg=None, n=6, fm_rows=2, seed=1):
    x, y, times, eps = batch(n, seed, fm_rows)
    return alpha_flow_loss(model, x, y, alpha=alpha, ratio_fm=0.0, config=cfg or config(), num_classes=NUM_CLASSES,
                           times=times, eps=eps, return_parts=True)


def test_alpha_one_clips_the_r_lt_t_targets_as_the_official_code():
    """Pinned parity: at alpha = 1 every r < t target (v) is clipped to +-loss.clip; the r = t rows are not."""
    cfg = config()
    cfg.loss.clip = 0.5              # well inside N(0, 1) noise: many elements are clipped
    x, y, (t, r, fm), eps = batch(n=8, seed=3, fm_rows=3)
    parts = alpha_flow_loss(tiny_dit(), x, y, alpha=1.0, ratio_fm=0.0, config=cfg, num_classes=NUM_CLASSES,
                            times=(t, r, fm), eps=eps, return_parts=True)[2]
    v = eps - x
    assert torch.equal(parts["target"][~fm], v[~fm].clamp(-0.5, 0.5))
    assert torch.equal(parts["target"][fm], v[fm]) and v[fm].abs().max() > 0.5
    assert (v[~fm].abs() > 0.5).any()
    cfg.loss.clip_alpha1 = False     # the old behaviour, kept as a setting
    parts = alpha_flow_loss(tiny_dit(), x, y, alpha=1.0, ratio_fm=0.0, config=cfg, num_classes=NUM_CLASSES,
                            times=(t, r, fm), eps=eps, return_parts=True)[2]
    assert torch.equal(parts["target"], v)


def test_proof1_alpha_one_target_is_v_and_one_pass():
    model = CountingModel(tiny_dit())
    cfg = config()
    cfg.loss.clip = 1e9              # no element reaches the clip: the target is v itself
    _, logs, parts = run(model, alpha=1.0, cfg=cfg)
    assert model.calls == 1
    assert torch.equal(parts["target"], parts["v_cfg"])
    x, _, _, eps = batch()
    assert torch.equal(parts["target"], eps - x)       # no guidance: v_cfg = v = eps - x
    assert logs["alpha"] == 1.0 and logs["l_tcc"] == 0.0


def test_proof2_alpha_half_is_the_shortcut_target():
    model = CountingModel(tiny_dit())
    cfg = config()
    cfg.loss.clip = 1e9              # the Shortcut target has no clip
    _, _, parts = run(model, alpha=0.5, cfg=cfg)
    assert model.calls == 2          # one no-grad pass on the r < t rows, one prediction
    t, r, fm, v = parts["t"], parts["r"], parts["fm_mask"], parts["v"]
    mid = (t + r) / 2                # the shortcut's half step: first half along v, second half by the network
    z_mid = parts["z_t"] - (t - mid).view(-1, 1, 1, 1) * v
    with torch.no_grad():
        second_half = model.inner(z_mid, r, mid, parts["y"])
    expected = torch.where(fm.view(-1, 1, 1, 1), v, 0.5 * v + 0.5 * second_half)
    torch.testing.assert_close(parts["target"], expected, rtol=1e-12, atol=1e-12)


def test_alpha_between_counts_passes_only_on_trajectory_rows():
    model = CountingModel(tiny_dit())
    seen = []
    orig = model.inner.forward
    model.inner.forward = lambda x, r, t, y: (seen.append(x.shape[0]), orig(x, r, t, y))[1]
    run(model, alpha=0.3, n=8, fm_rows=5)
    assert seen == [3, 8]            # the no-grad pass sees the 3 rows with r < t only


def test_target_clip_applies_to_the_alpha_branch_only():
    model = tiny_dit()
    with torch.no_grad():
        model.final.linear.bias.fill_(100.0)      # a network that says u = 100 everywhere
    cfg = config()
    _, _, parts = run(model, alpha=0.2, cfg=cfg)
    traj = ~parts["fm_mask"]
    assert parts["target"][traj].abs().max() <= cfg.loss.clip
    _, _, parts0 = run(model, alpha=0.0, cfg=cfg)
    assert torch.equal(parts0["target"][parts0["fm_mask"]], parts0["v"][parts0["fm_mask"]])


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_proof3_small_alpha_gradient_matches_meanflow():
    model = tiny_dit()
    cfg = config()
    cfg.loss = LossConfig(adaptive_p=0.0, clip=1e9)   # plain squared error: weights n_i only
    alpha = 1e-4
    # with p = 0 the loss is mean_i alpha l_i, so alpha^-1 |u - u_tgt|^2 averaged over rows is loss / alpha^2
    loss_a, _, _ = run(model, alpha=alpha, cfg=cfg, fm_rows=0)
    g_alpha = _grads(model, loss_a / alpha ** 2)
    loss_mf, _, _ = run(model, alpha=0.0, cfg=cfg, fm_rows=0)
    g_mf = _grads(model, loss_mf)
    rel = (g_alpha - g_mf).norm() / g_mf.norm()
    assert g_mf.norm() > 0
    assert rel < 1e-2, f"relative error {rel:.3e}"


def test_jvp_primal_keeps_the_plain_forward_gradient():
    model = tiny_dit()
    x, y, (t, r, _), eps = batch()
    v = eps - x
    u, _ = meanflow_dudt(model, x, r, t, y, v)
    g_jvp = _grads(model, (u ** 2).sum())
    with math_attention(model):
        g_plain = _grads(model, (model(x, r, t, y) ** 2).sum())
    torch.testing.assert_close(g_jvp, g_plain, rtol=1e-10, atol=1e-12)


def test_proof4_jvp_equals_central_finite_differences():
    model = tiny_dit()
    x, y, (t, r, _), eps = batch()
    v = eps - x
    _, dudt = meanflow_dudt(model, x, r, t, y, v)
    h = 1e-5
    with torch.no_grad():
        plus = model(x + h * v, r, t + h, y)
        minus = model(x - h * v, r, t - h, y)
    fd = (plus - minus) / (2 * h)
    assert dudt.abs().max() > 1e-3
    torch.testing.assert_close(dudt, fd, rtol=1e-6, atol=1e-8)


def test_meanflow_target_formula_and_single_pass():
    model = CountingModel(tiny_dit())
    seen = []
    orig = model.inner.forward
    model.inner.forward = lambda x, r, t, y: (seen.append(x.shape[0]), orig(x, r, t, y))[1]
    _, _, parts = run(model, alpha=0.0)
    assert sorted(seen) == [2, 4]    # each row once: the JVP pass (4 rows r < t) is the prediction pass
    t, r = parts["t"], parts["r"]
    u, dudt = meanflow_dudt(model.inner, parts["z_t"], r, t, parts["y"], parts["v_cfg"])
    torch.testing.assert_close(parts["u"], u.detach(), rtol=1e-12, atol=1e-12)
    expected = parts["v_cfg"] - (t - r).view(-1, 1, 1, 1) * dudt
    torch.testing.assert_close(parts["target"], expected.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_proof8_cfg_target_formula(alpha):
    omega, kappa, t_min, t_max = 0.6, 0.3, 0.3, 0.7
    model = CountingModel(tiny_dit())
    cfg = config(omega=omega, kappa=kappa, t_min=t_min, t_max=t_max)
    _, logs, parts = run(model, alpha=alpha, cfg=cfg, n=10, fm_rows=10)
    t, z, v, y = parts["t"], parts["z_t"], parts["v"], parts["y"]
    inside = (t > t_min) & (t < t_max)
    assert 0 < int(inside.sum()) < 10
    with torch.no_grad():
        u_c = model.inner(z, t, t, y)
        u_n = model.inner(z, t, t, torch.full_like(y, NUM_CLASSES))
    expected = torch.where(inside.view(-1, 1, 1, 1), omega * v + kappa * u_c + (1 - omega - kappa) * u_n, v)
    torch.testing.assert_close(parts["v_cfg"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(parts["target"], expected, rtol=1e-12, atol=1e-12)   # all rows r = t
    assert logs["cfg_scale"] == pytest.approx(omega / (1 - kappa))


def test_no_guidance_pass_when_omega_one_kappa_zero():
    model = CountingModel(tiny_dit())
    run(model, alpha=0.5, cfg=config(omega=1.0, kappa=0.0))
    assert model.calls == 2
    model.calls = 0
    run(model, alpha=0.5, cfg=config(omega=0.5, kappa=0.2))
    assert model.calls == 3


def test_label_dropout_rows_get_the_null_class_and_plain_velocity():
    model = tiny_dit()
    cfg = config(omega=0.5, kappa=0.2)
    cfg.guidance.label_dropout = 0.5
    x, y, times, eps = batch(n=40, fm_rows=40)
    g = torch.Generator().manual_seed(3)
    _, _, parts = alpha_flow_loss(model, x, y, alpha=1.0, ratio_fm=1.0, config=cfg, num_classes=NUM_CLASSES,
                                  times=times, eps=eps, generator=g, return_parts=True)
    dropped = parts["y"] == NUM_CLASSES
    assert 5 < int(dropped.sum()) < 35
    assert torch.equal(parts["v_cfg"][dropped], parts["v"][dropped])
    assert not torch.allclose(parts["v_cfg"][~dropped], parts["v"][~dropped])


def test_adaptive_weight_minsnr_and_beta_enter_the_loss():
    model = tiny_dit()
    cfg = config()
    _, _, base = run(model, alpha=1.0, cfg=cfg)
    per_row = ((base["u"] - base["target"]) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(base["weight"], 1 / (per_row + cfg.loss.adaptive_c))
    cfg.loss.minsnr_gamma = 5.0
    cfg.loss.beta = True
    _, logs, parts = run(model, alpha=1.0, cfg=cfg)
    fm, t, dt = parts["fm_mask"], parts["t"], parts["t"] - parts["r"]
    snr = ((1 - t) / t) ** 2
    torch.testing.assert_close(parts["weight"][fm], base["weight"][fm] * t[fm] ** 2 * snr[fm].clamp(max=5.0))
    # progress 0: s = 1, beta = lambda (1 - dt)
    from alphaflow.timesteps import expected_one_minus_dt
    lam = 1 / expected_one_minus_dt(cfg.time)
    torch.testing.assert_close(parts["weight"][~fm], base["weight"][~fm] * lam * (1 - dt[~fm]))
    assert logs["beta_mean"] == pytest.approx(float((lam * (1 - dt[~fm])).mean()))


def test_grad_cosine_is_logged_and_bounded():
    model = tiny_dit()
    x, y, times, eps = batch()
    _, logs = alpha_flow_loss(model, x, y, alpha=0.0, ratio_fm=0.0, config=config(), num_classes=NUM_CLASSES,
                              times=times, eps=eps, grad_diagnostics=True)
    assert -1.0 <= logs["grad_cos"] <= 1.0
    assert {"l_tfm", "l_tcc", "loss", "cfg_scale", "beta_mean"} <= set(logs)
