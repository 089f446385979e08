"""Per-row loss weights: the adaptive weight, MinSNR for the r = t rows, Improved MeanFlow's progressive beta."""

from __future__ import annotations

import torch


def adaptive_weight(per_row_loss: torch.Tensor, n: torch.Tensor | float = 1.0, p: float = 1.0,
                    c: float = 1e-3) -> torch.Tensor:
    """w_i = n_i / (sg(l_i) + c)^p (docs/method.md#loss-weights): w_i l_i ~ n_i, so every row pulls with about the
    same force."""
    return n / (per_row_loss.detach() + c) ** p


def minsnr_weight(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """MinSNR-gamma weight for the velocity loss of the r = t rows, for z_t = (1 - t) x + t eps, v = eps - x.

    SNR(t) = ((1 - t) / t)^2. MinSNR weights the x-prediction error by min(SNR, gamma). With velocity prediction
    x_hat = z_t - t v_hat, so |x_hat - x|^2 = t^2 |v_hat - v|^2, and the same weighting of the velocity loss is
        w(t) = t^2 min(SNR, gamma) = min(SNR, gamma) / (1 + sqrt(SNR))^2
    (the analogue of min(SNR, gamma) / (SNR + 1) for v-prediction in variance-preserving diffusion, where
    sigma^2 = 1 / (SNR + 1) plays the role of t^2). It is applied after the adaptive normalisation, which
    would otherwise cancel it.
    """
    t = t.clamp(min=1e-6)
    snr = ((1 - t) / t) ** 2
    return t ** 2 * torch.clamp(snr, max=gamma)


def progress_s(progress: float, k: float = 1.0) -> float:
    """s = 1 - (i / T)^k for progress = i / T: 1 at the start of training, 0 at the end."""
    return 1.0 - min(max(float(progress), 0.0), 1.0) ** k


def beta_weight(dt: torch.Tensor, s: float, lam: float) -> torch.Tensor:
    """Improved MeanFlow's progressive weight on r < t rows: beta(dt, s) = 1 - s + lambda s (1 - dt).
    With lambda = 1 / E[1 - dt] its mean is 1 at s = 1; it is exactly 1 at s = 0."""
    return 1.0 - s + lam * s * (1.0 - dt)
