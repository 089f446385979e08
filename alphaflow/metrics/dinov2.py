"""DINOv2 ViT features for FD-DINOv2, from a local checkpoint (no DINOv2 weights ship in any package here).

    ext = load_extractor("dinov2:/models/dinov2_vitl14_pretrain.pth")    # the torch hub file of facebookresearch
    ext.features(images_uint8)                                          # (N, 1024) CLS token after the final norm

The network is rebuilt here from the checkpoint's own tensor shapes (patch size, width, depth, registers, MLP or
SwiGLU feed-forward; 64-d heads as in every released size), so the hub .pth files load with no code from the
dinov2 repository. Preprocessing follows FD-DINOv2 (Stein et al. 2023, dgm-eval): bicubic resize to 224x224,
[0, 1], ImageNet mean/std. Positional embeddings of the 518-px pretraining grid are resized bicubically to the
input grid, with the +0.1 offset of the reference implementation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alphaflow.metrics.errors import MetricsError
from alphaflow.metrics.extractor_base import FeatureExtractor, RGBExtractor, as_rgb_float, file_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_DIM = 64


@dataclass(frozen=True)
class ViTConfig:
    patch_size: int = 14
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    ffn_hidden: int = 1536
    ffn: str = "mlp"            # mlp (GELU) | swiglu
    num_registers: int = 0
    pos_grid: int = 37          # side of the pretraining patch grid (518 / 14)
    layer_scale: bool = True
    input_size: int = 224       # images are resized to input_size x input_size

    @property
    def name(self) -> str:
        size = {384: "s", 768: "b", 1024: "l", 1536: "g"}.get(self.embed_dim)
        arch = f"vit{size}{self.patch_size}" if size else f"vit-d{self.embed_dim}-p{self.patch_size}"
        return f"dinov2-{arch}" + (f"-reg{self.num_registers}" if self.num_registers else "")


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class _Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = _Attention(d, cfg.num_heads)
        self.mlp = (_SwiGLU if cfg.ffn == "swiglu" else _Mlp)(d, cfg.ffn_hidden)
        self.ls1 = _LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.ls2 = _LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DINOv2ViT(nn.Module):
    """The DINOv2 backbone; parameter names match the released hub checkpoints."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = _PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid ** 2, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, d)) if cfg.num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, d))   # used only in training; kept so checkpoints load strictly
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)

    def _pos_embed(self, gh: int, gw: int) -> torch.Tensor:
        m = self.cfg.pos_grid
        if gh == m and gw == m:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = patch_pos.reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
        # the reference resizes by a scale factor (grid + 0.1) / m rather than to a size; the factor also sets the
        # sampling positions, so we do the same to get the same embeddings
        grid = F.interpolate(grid, scale_factor=((gh + 0.1) / m, (gw + 0.1) / m), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1).to(patch_pos.dtype)
        return torch.cat([cls_pos, grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, D) CLS token after the final norm."""
        p = self.cfg.patch_size
        gh, gw = x.shape[2] // p, x.shape[3] // p
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self._pos_embed(gh, gw)
        if self.register_tokens is not None:  # registers go after the CLS token and carry no position
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(len(x), -1, -1), tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]


def _unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a hub file (a plain state dict) or of a training checkpoint that nests one."""
    for key in ("teacher", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or "cls_token" not in {k.split("backbone.")[-1] for k in obj}:
        raise MetricsError(f"{path}: not a DINOv2 checkpoint (no cls_token tensor)")
    sd = {k.split("backbone.")[-1]: v for k, v in obj.items() if not k.startswith("dino_head")}
    # block-chunked layouts name blocks "blocks.<chunk>.<i>.": renumber them "blocks.<i>."
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


def config_from_state_dict(sd: dict[str, torch.Tensor], input_size: int = 224) -> ViTConfig:
    d = sd["cls_token"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    swiglu = "blocks.0.mlp.w12.weight" in sd
    hidden = sd["blocks.0.mlp.w3.weight"].shape[1] if swiglu else sd["blocks.0.mlp.fc1.weight"].shape[0]
    pos_grid = math.isqrt(sd["pos_embed"].shape[1] - 1)
    return ViTConfig(patch_size=sd["patch_embed.proj.weight"].shape[-1], embed_dim=d, depth=depth,
                     num_heads=max(1, d // HEAD_DIM), ffn_hidden=hidden, ffn="swiglu" if swiglu else "mlp",
                     num_registers=sd["register_tokens"].shape[1] if "register_tokens" in sd else 0,
                     pos_grid=pos_grid, layer_scale="blocks.0.ls1.gamma" in sd, input_size=input_size)


class DINOv2Extractor(RGBExtractor, FeatureExtractor):
    batch_size = 32

    def __init__(self, path: str | Path, input_size: int = 224):
        path = Path(path)
        if not path.is_file():
            raise MetricsError(f"{path}: DINOv2 checkpoint not found")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise MetricsError(f"{path}: cannot read the DINOv2 checkpoint ({type(e).__name__})") from None
        sd = _unwrap_state_dict(obj, path)
        self.cfg = config_from_state_dict(sd, input_size)
        self.net = DINOv2ViT(self.cfg)
        try:
            result = self.net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches; the first line of torch's message is only a header
            lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln] or [str(e).splitlines()[0]]
            raise MetricsError(f"{path}: tensors do not fit {self.cfg.name}: {lines[0]}") from None
        if result.missing_keys or result.unexpected_keys:
            raise MetricsError(f"{path}: tensors do not fit {self.cfg.name}: missing {result.missing_keys[:3]}, "
                               f"unexpected {result.unexpected_keys[:3]}")
        self.net.eval()
        self.sha256 = file_sha256(path)
        self.id = self.cfg.name
        self.dim = self.cfg.embed_dim
        self.preprocess = f"bicubic {input_size}x{input_size}; imagenet mean/std"
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def _features_batch(self, images: np.ndarray) -> torch.Tensor:
        x = as_rgb_float(images)
        s = self.cfg.input_size
        if x.shape[2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False).clamp_(0, 255)
        return self.net((x / 255.0 - self._mean) / self._std)
