"""(t, r) samplers (docs/method.md#time-sampling).

Rows with r < t: `logit_normal` (two draws of sigmoid(N(mu, sigma)), t = max, r = min), `uniform` (two U(0, 1)
draws, max and min), `r_ut` (t one logit-normal draw, r = u t with u ~ U(0, 1)).
Rows with r = t (a fraction ratio_fm, picked by a random mask of exactly round(ratio_fm * B) rows): t from the
`fm_sampler`: `same` (one draw of the main sampler's marginal family: logit-normal(mu, sigma) for logit_normal and
r_ut, U(0, 1) for uniform), `logit_normal` (fm_mu, fm_sigma), `uniform`, or any sampler added with
`register_fm_sampler` (the p_acc(t) of Improved MeanFlow).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import SimpleNamespace

import torch

# fm sampler: (n, time_cfg, generator) -> t of shape (n,), float32 in [0, 1]
FmSampler = Callable[[int, object, torch.Generator], torch.Tensor]
FM_SAMPLERS: dict[str, FmSampler] = {}


def register_fm_sampler(name: str, fn: FmSampler) -> None:
    """Add a sampler for the r = t rows, selectable as time.fm_sampler = name."""
    FM_SAMPLERS[name] = fn


def _logit_normal(n: int, mu: float, sigma: float, g: torch.Generator | None) -> torch.Tensor:
    return torch.sigmoid(torch.randn(n, generator=g) * sigma + mu)


def _uniform(n: int, g: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=g)


def _fm_same(n, cfg, g):
    return _uniform(n, g) if cfg.sampler == "uniform" else _logit_normal(n, cfg.mu, cfg.sigma, g)


register_fm_sampler("same", _fm_same)
register_fm_sampler("logit_normal", lambda n, cfg, g: _logit_normal(n, cfg.fm_mu, cfg.fm_sigma, g))
register_fm_sampler("uniform", lambda n, cfg, g: _uniform(n, g))


def sample_t_r(n: int, cfg, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs with r <= t from the main sampler (cfg: TimeConfig)."""
    if cfg.sampler == "logit_normal":
        a, b = _logit_normal(n, cfg.mu, cfg.sigma, generator), _logit_normal(n, cfg.mu, cfg.sigma, generator)
        return torch.maximum(a, b), torch.minimum(a, b)
    if cfg.sampler == "uniform":
        a, b = _uniform(n, generator), _uniform(n, generator)
        return torch.maximum(a, b), torch.minimum(a, b)
    if cfg.sampler == "r_ut":
        t = _logit_normal(n, cfg.mu, cfg.sigma, generator)
        return t, _uniform(n, generator) * t
    raise ValueError(f"time.sampler: {cfg.sampler!r} is not one of logit_normal, uniform, r_ut")


def sample_times(batch_size: int, ratio_fm: float, cfg, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, r, fm_mask) for a batch: fm_mask marks the round(ratio_fm * B) rows with r = t, at random positions."""
    if not 0.0 <= ratio_fm <= 1.0:
        raise ValueError(f"ratio_fm: must lie in [0, 1], got {ratio_fm}")
    if cfg.fm_sampler not in FM_SAMPLERS:
        raise ValueError(f"time.fm_sampler: {cfg.fm_sampler!r} is not one of {', '.join(FM_SAMPLERS)}")
    t, r = sample_t_r(batch_size, cfg, generator)
    n_fm = int(round(ratio_fm * batch_size))
    fm_mask = torch.zeros(batch_size, dtype=torch.bool)
    fm_mask[torch.randperm(batch_size, generator=generator)[:n_fm]] = True
    if n_fm:
        t_fm = FM_SAMPLERS[cfg.fm_sampler](n_fm, cfg, generator).to(t.dtype)
        t[fm_mask] = t_fm
        r[fm_mask] = t_fm
    return t, r, fm_mask


@functools.lru_cache(maxsize=64)
def _expected_one_minus_dt(sampler: str, mu: float, sigma: float) -> float:
    if sampler == "uniform":
        return 2.0 / 3.0            # E|a - b| = 1/3 for two U(0, 1) draws

    cfg = SimpleNamespace(sampler=sampler, mu=mu, sigma=sigma)
    g = torch.Generator().manual_seed(12345)
    t, r = sample_t_r(1_000_000, cfg, g)
    return float((1.0 - (t - r).double()).mean())


def expected_one_minus_dt(time_cfg) -> float:
    """E[1 - (t - r)] over the r < t sampler of `time_cfg`: closed form for uniform, Monte Carlo (10^6 draws,
    fixed seed, cached) otherwise. lambda = 1 / this in Improved MeanFlow's beta weight."""
    return _expected_one_minus_dt(time_cfg.sampler, float(time_cfg.mu), float(time_cfg.sigma))
