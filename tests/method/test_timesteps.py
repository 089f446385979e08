"""Time samplers, the r = t rows, and proof 5 (beta's mean under the sampler in use)."""

import pytest
import torch

from alphaflow.config import TimeConfig
from alphaflow.loss_weights import adaptive_weight, beta_weight, minsnr_weight, progress_s
from alphaflow.timesteps import FM_SAMPLERS, expected_one_minus_dt, register_fm_sampler, sample_t_r, sample_times


@pytest.mark.parametrize("sampler", ["logit_normal", "uniform", "r_ut"])
def test_samplers_give_ordered_times_in_unit_interval(sampler):
    g = torch.Generator().manual_seed(0)
    t, r = sample_t_r(20000, TimeConfig(sampler=sampler), g)
    assert bool(((0 <= r) & (r <= t) & (t <= 1)).all())
    assert float((t - r).mean()) > 0.05


def test_logit_normal_is_max_and_min_of_two_draws():
    cfg = TimeConfig(sampler="logit_normal", mu=-0.4, sigma=1.0)
    t, r = sample_t_r(200000, cfg, torch.Generator().manual_seed(0))
    # the median of the min of two iid draws is the 1 - 1/sqrt(2) quantile of one draw
    q = torch.sigmoid(torch.tensor(-0.4 + 1.0 * -0.5449))   # Phi^-1(0.2929) = -0.5449
    assert float(r.median()) == pytest.approx(float(q), abs=5e-3)


def test_fm_mask_has_exact_count_and_r_equals_t():
    g = torch.Generator().manual_seed(0)
    t, r, fm = sample_times(64, 0.25, TimeConfig(), g)
    assert int(fm.sum()) == 16
    assert torch.equal(t[fm], r[fm]) and bool((r[~fm] < t[~fm]).all())
    _, _, fm2 = sample_times(64, 0.25, TimeConfig(), torch.Generator().manual_seed(1))
    assert not torch.equal(fm, fm2)            # random positions, not the first rows


def test_fm_sampler_registry():
    register_fm_sampler("half", lambda n, cfg, g: torch.full((n,), 0.5))
    try:
        t, r, fm = sample_times(10, 0.5, TimeConfig(fm_sampler="half"), torch.Generator().manual_seed(0))
        assert torch.equal(t[fm], torch.full((5,), 0.5)) and torch.equal(r[fm], t[fm])
    finally:
        FM_SAMPLERS.pop("half")
    with pytest.raises(ValueError, match="fm_sampler"):  # unregistered again: refused where it is written
        TimeConfig(fm_sampler="half")


@pytest.mark.parametrize("sampler", ["logit_normal", "uniform", "r_ut"])
def test_proof5_beta_mean_one_at_start_and_one_at_end(sampler):
    cfg = TimeConfig(sampler=sampler)
    lam = 1 / expected_one_minus_dt(cfg)
    t, r = sample_t_r(200000, cfg, torch.Generator().manual_seed(7))   # fresh draws, not the MC's own
    dt = (t - r).double()
    assert float(beta_weight(dt, progress_s(0.0), lam).mean()) == pytest.approx(1.0, abs=5e-3)
    assert torch.equal(beta_weight(dt, progress_s(1.0), lam), torch.ones_like(dt))
    mid = beta_weight(dt, progress_s(0.5), lam)
    assert float(mid.mean()) == pytest.approx(1.0, abs=5e-3)      # the mean stays 1 all along


def test_expected_one_minus_dt_uniform_closed_form():
    assert expected_one_minus_dt(TimeConfig(sampler="uniform")) == pytest.approx(2 / 3)


def test_minsnr_weight_form():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    snr = ((1 - t) / t) ** 2
    w = minsnr_weight(t, 5.0)
    torch.testing.assert_close(w, torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / (1 + snr.sqrt()) ** 2)
    assert w[1] == pytest.approx(0.25)        # SNR 1 at t = 1/2: t^2 * 1


def test_adaptive_weight_normalises_and_detaches():
    losses = torch.tensor([0.5, 2.0], requires_grad=True)
    w = adaptive_weight(losses, torch.tensor([1.0, 0.5]), p=1.0, c=1e-3)
    assert not w.requires_grad
    torch.testing.assert_close(w, torch.tensor([1 / 0.501, 0.5 / 2.001]))
