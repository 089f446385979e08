"""Stored latents -> what the model sees: float32, (x - mean) / std per channel with the manifest's statistics; a
stored posterior (mean and log-variance channels) is sampled first.

The training loader runs this on the trainer's device, after the batch has crossed in its stored dtype: on a GPU
node the CPU then only gathers samples (and float16 halves the bytes copied to the device), the GPU does the
arithmetic. On a CPU-only node it is the same code on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch


class LatentNormalizer:
    def __init__(self, mean, std, posterior: bool, seed: int, image_shape: tuple[int, int, int]):
        c, h, w = image_shape
        inv = 1.0 / torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
        # full (C, H, W) planes: one fused addcmul over equal shapes is several times faster on the CPU than
        # mul_ and add_ with per-channel broadcasting
        self._scale = inv.expand(c, h, w).contiguous()
        self._shift = (-torch.tensor(mean, dtype=torch.float32).view(c, 1, 1) * inv).expand(c, h, w).contiguous()
        self.posterior, self.seed = posterior, int(seed)
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._generators: dict[torch.device, torch.Generator] = {}

    def __call__(self, x: torch.Tensor, slot: int, counter: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """x: a stored batch (B, C or 2C, H, W) on any device; out: float32 (B, C, H, W) on that device, or None.
        (slot, counter) seed a posterior's draw: the same place in the same stream draws the same noise."""
        scale, shift = self._stats(x.device)
        if out is None:
            out = torch.empty((x.shape[0], *scale.shape), dtype=torch.float32, device=x.device)
        if self.posterior:
            c = x.shape[1] // 2
            g = self._generator(x.device)
            g.manual_seed(int(np.random.SeedSequence([self.seed, 3, slot, counter]).generate_state(1)[0]))
            out.copy_(x[:, :c])
            eps = torch.randn(out.shape, generator=g, device=x.device)
            out.addcmul_(torch.exp(0.5 * x[:, c:].float()), eps)     # z ~ N(mean, exp(logvar))
        else:
            out.copy_(x)
        # in place over equal shapes; widening first and then one fused op beats a mixed-dtype addcmul on the CPU
        return torch.addcmul(shift, out, scale, out=out)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self._scale.to(device), self._shift.to(device))
        return self._on[device]

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]
