"""Codecs between uint8 images (N, C, H, W) and the latents the model trains on.

- "identity": latents are the pixels scaled to [-1, 1].
- "vae:PATH": a diffusers AutoencoderKL saved with save_pretrained at PATH (diffusers is the optional extra `vae`,
  imported only here and only when used). Latents are (z - shift_factor) * scaling_factor.
The codec's name is stored in the manifest and in checkpoints, so `get_codec(name)` rebuilds it anywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alphaflow.data.errors import DataError


def _as_uint8_images(images) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4:
        raise DataError(f"codec: expected uint8 images (N, C, H, W), got {a.dtype} {a.shape}")
    return a


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def _pixels_from_unit(x: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 0..255 (round, then clip)."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


class IdentityCodec:
    name = "identity"
    latent_channels_per_image_channel = 1

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(image_shape)

    def encode(self, images) -> np.ndarray:
        return _as_uint8_images(images).astype(np.float32) / 127.5 - 1.0

    def decode(self, latents) -> np.ndarray:
        return _pixels_from_unit(_to_numpy(latents))


class VAECodec:
    """A diffusers AutoencoderKL. store="mean" keeps the posterior mean; "posterior" keeps mean and log-variance
    stacked on the channel axis (2C channels), and the loader draws z = mean + std * eps each time it is read."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32):
        try:  # diffusers is the optional `vae` extra
            from diffusers import AutoencoderKL
        except ImportError:
            raise DataError(f"vae:{path}: the VAE codec needs diffusers (pip install 'afsweep[vae]')") from None
        if not (Path(path) / "config.json").is_file():
            raise DataError(f"vae:{path}: no AutoencoderKL there (expected config.json from save_pretrained)")
        try:
            self.vae = AutoencoderKL.from_pretrained(path).to(device).eval()
        except Exception as e:
            raise DataError(f"vae:{path}: cannot load the AutoencoderKL ({type(e).__name__})") from None
        self.path = str(Path(path).resolve())
        self.name = f"vae:{self.path}"
        self.device = device
        self.batch_size = batch_size
        cfg = self.vae.config
        self.scale = float(getattr(cfg, "scaling_factor", 1.0) or 1.0)
        self.shift = float(getattr(cfg, "shift_factor", 0.0) or 0.0)
        self.channels = int(cfg.latent_channels)
        self.down = 2 ** (len(cfg.block_out_channels) - 1)
        self.in_channels = int(cfg.in_channels)

    def latent_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        c, h, w = image_shape
        return (self.channels, h // self.down, w // self.down)

    @torch.no_grad()
    def encode(self, images, store: str = "mean") -> np.ndarray:
        """uint8 (N, C, H, W) -> float32 latents (N, C', h, w), or (N, 2C', h, w) for store="posterior"."""
        a = _as_uint8_images(images)
        if a.shape[1] != self.in_channels:
            raise DataError(f"{self.name}: images have {a.shape[1]} channels, the VAE expects {self.in_channels}")
        out = []
        for i in range(0, len(a), self.batch_size):
            x = torch.from_numpy(a[i:i + self.batch_size]).to(self.device, torch.float32) / 127.5 - 1.0
            dist = self.vae.encode(x).latent_dist
            mean = (dist.mean - self.shift) * self.scale
            if store == "posterior":  # log-variance of the scaled latent: + 2 log(scale)
                out.append(torch.cat([mean, dist.logvar + 2.0 * np.log(self.scale)], dim=1).cpu())
            else:
                out.append(mean.cpu())
        return torch.cat(out).numpy().astype(np.float32)

    @torch.no_grad()
    def decode(self, latents) -> np.ndarray:
        z = latents if isinstance(latents, torch.Tensor) else torch.from_numpy(np.asarray(latents, np.float32))
        out = []
        for i in range(0, len(z), self.batch_size):
            zi = z[i:i + self.batch_size].to(self.device, torch.float32) / self.scale + self.shift
            out.append(self.vae.decode(zi).sample.cpu())
        return _pixels_from_unit(torch.cat(out).numpy())


_cache: dict[str, object] = {}


def get_codec(name: str):
    """'identity' or 'vae:PATH' (or a bare PATH of a saved AutoencoderKL). VAE codecs are loaded once per process."""
    if name in ("identity", "", None):
        return IdentityCodec()
    path = name[4:] if name.startswith("vae:") else name
    key = str(Path(path).resolve())
    if key not in _cache:
        if not Path(path).exists():
            raise DataError(f"codec {name!r}: unknown (use 'identity' or 'vae:PATH' of a saved AutoencoderKL)")
        _cache[key] = VAECodec(path)
    return _cache[key]
