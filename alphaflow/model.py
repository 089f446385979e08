"""DiT for average-velocity prediction: u(x, r, t | y) (docs/method.md#conventions, #model).

adaLN-Zero blocks, patch embedding, fixed 2-D sin-cos positions, LayerNorm eps 1e-6 without affine, MLP ratio 4
with GELU(tanh), xavier init, zero-init modulation and final layer. Times enter raw in [0, 1] through two
sinusoidal embedders, one for t and one for t - r; both are added to the class embedding, whose last row
(index num_classes) is the null class of label dropout and CFG.

Attention has two paths: the fused `F.scaled_dot_product_attention` (default) and an explicit softmax(QK^T)V that
forward-mode AD (`torch.func.jvp`) can differentiate; `with math_attention(model):` switches to the second.
The CPU fast paths (`kernels`) are one FastPath (alphaflow/fast_path.py) that every class here reads.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from alphaflow.fast_path import REFERENCE, FastPath

# name -> (depth, width, heads). micro/tiny/small are sized for CPU runs (tiny: the sweeps' default on this
# machine, see benchmarks/step_cost.py); S/B/L/XL are the DiT sizes of the papers.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (2, 64, 2),
    "tiny": (4, 96, 3),
    "small": (6, 192, 6),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

FREQ_DIM = 256          # sinusoidal features per time embedder (DiT)


def timestep_features(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of raw times (B,) -> (B, dim): cos/sin of t * exp(-log(max_period) * i / half)."""
    half = dim // 2
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32   # bf16 times would lose the signal
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=dtype, device=t.device) / half)
    args = t[:, None].to(dtype) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimeEmbedder(nn.Module):
    """Scalars (B,) -> (B, width), or (B, k) -> (B, width) through the features of all k scalars side by side."""

    def __init__(self, width: int, scalars: int = 1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(scalars * FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t.reshape(-1)).reshape(t.shape[0], -1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


def guidance_features(g: torch.Tensor) -> torch.Tensor:
    """(B, 3) guidance conditions (omega, t_min, t_max) -> the three scalars the network sees, each in [0, 1]:
    1 - 1/omega (0 for no guidance, as Improved MeanFlow's code), t_min, t_max."""
    return torch.stack([1.0 - 1.0 / g[:, 0], g[:, 1], g[:, 2]], dim=1)


class TanhGELU(nn.Module):
    """GELU with the tanh approximation; on CPU through alphaflow.fast_ops' fused kernels (ATen's own is ~4x
    slower than its exact GELU there), elsewhere ATen's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not torch._C._are_functorch_transforms_active():   # jvp: ATen's
            from alphaflow.fast_ops import gelu_tanh

            return gelu_tanh(x)
        return F.gelu(x, approximate="tanh")


def sincos_2d(width: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (grid_h * grid_w, width): half the channels encode the row, half the column."""
    if width % 4:
        raise ValueError(f"model width must be divisible by 4 for 2-D sin-cos positions, got {width}")

    def one_d(pos: torch.Tensor, dim: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
        out = pos.double()[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    emb = torch.cat([one_d(rows.reshape(-1), width // 2), one_d(cols.reshape(-1), width // 2)], dim=1)
    return emb.float()


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, fast_path: FastPath = REFERENCE):
        super().__init__()
        if width % heads:
            raise ValueError(f"model width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fast_path = fast_path
        self.use_math = False   # explicit softmax path, differentiable by forward-mode AD (math_attention)

    def explicit(self, x: torch.Tensor, q: torch.Tensor | None = None) -> bool:
        """Explicit softmax attention rather than the fused kernel: always for forward-mode AD (use_math), else
        where the fast path chooses it (FastPath.explicit_attention)."""
        return self.use_math or self.fast_path.explicit_attention(x, q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.explicit(x, q):
            attn = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            out = attn.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """x (1 + scale) + shift, per row; fused: as one addcmul (one pass over x instead of two; fast path)."""
    if fused:
        return torch.addcmul(shift[:, None], x, 1 + scale[:, None])
    return x * (1 + scale[:, None]) + shift[:, None]


def gated_add(x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """The residual x + gate out, per row; fused: as one addcmul (fast path)."""
    if fused:
        return torch.addcmul(x, gate[:, None], out)
    return x + gate[:, None] * out


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, fast_path: FastPath = REFERENCE):
        super().__init__()
        self.fast_path = fast_path
        self.norm1 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(width, heads, fast_path)
        self.norm2 = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        gelu = TanhGELU() if fast_path.fused_gelu else nn.GELU(approximate="tanh")
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), gelu, nn.Linear(4 * width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c).chunk(6, dim=-1)
        f = self.fast_path.addcmul
        x = gated_add(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1, f)), f)
        return gated_add(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2, f)), f)


class FinalLayer(nn.Module):
    def __init__(self, width: int, patch: int, out_channels: int, fast_path: FastPath = REFERENCE):
        super().__init__()
        self.fast_path = fast_path
        self.norm = nn.LayerNorm(width, eps=1e-6, elementwise_affine=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch * patch * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale, self.fast_path.addcmul))


class DiT(nn.Module):
    """u = DiT(x, r, t, y, g): x (B, C, H, W), r and t (B,) in [0, 1], y (B,) long in [0, num_classes].

    guidance_conditioned: the network also takes g (B, 3) = (omega, t_min, t_max), the guidance scale and interval
    it should realise (Improved MeanFlow's guidance as a condition), embedded like a time and added to the adaLN
    condition; g = None means no guidance (omega 1 over [0, 1]). kernels: fast, fused or reference, the CPU fast
    paths (FastPath.for_kernels; the same function and parameters under each)."""

    def __init__(self, in_channels: int, image_size: tuple[int, int], num_classes: int, patch: int,
                 depth: int, width: int, heads: int, guidance_conditioned: bool = False, kernels: str = "reference"):
        super().__init__()
        h, w = image_size
        if h % patch or w % patch:
            raise ValueError(f"image size {h}x{w} is not divisible by patch size {patch}")
        self.in_channels, self.patch, self.num_classes = in_channels, patch, num_classes
        self.fast_path = fast_path = FastPath.for_kernels(kernels)
        self.grid = (h // patch, w // patch)
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_2d(width, *self.grid)[None], persistent=False)
        self.t_embed = TimeEmbedder(width)
        self.dt_embed = TimeEmbedder(width)          # embeds t - r
        self.y_embed = nn.Embedding(num_classes + 1, width)   # last row: the null class
        self.g_embed = TimeEmbedder(width, scalars=3) if guidance_conditioned else None
        self.blocks = nn.ModuleList(DiTBlock(width, heads, fast_path) for _ in range(depth))
        self.final = FinalLayer(width, patch, in_channels, fast_path)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        for emb in (self.t_embed, self.dt_embed, self.g_embed):
            if emb is None:
                continue
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for block in self.blocks:   # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final.modulation[-1].weight)
        nn.init.zeros_(self.final.modulation[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def condition(self, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        """The adaLN condition c (B, width) of times, label and (if conditioned) guidance."""
        c = self.t_embed(t) + self.dt_embed(t - r) + self.y_embed(y)
        if self.g_embed is not None:
            g = no_guidance(t) if g is None else g.to(t.dtype)
            c = c + self.g_embed(guidance_features(g))
        return c

    def unpatchify(self, out: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W)."""
        gh, gw = self.grid
        p, ch = self.patch, self.in_channels
        out = out.reshape(out.shape[0], gh, gw, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(out.shape[0], ch, gh * p, gw * p)

    def to_stream(self, x: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Tokens and condition (or their tangents) as the blocks take them: on the fast path contiguous
        (LayerNorm copies a strided input, forward and backward) and in FastPath.stream_dtype. The forward and the
        tangent pass both enter the blocks through here, so their layouts and dtypes agree."""
        if not self.fast_path.stream:
            return list(tensors)
        stream = self.fast_path.stream_dtype(x)
        return [t.contiguous() if stream is None else t.contiguous().to(stream) for t in tensors]

    def forward(self, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                g: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        c = self.condition(r, t, y, g)
        tokens, c = self.to_stream(x, tokens, c)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final(tokens, c))


def no_guidance(t: torch.Tensor) -> torch.Tensor:
    """g = (omega 1, t_min 0, t_max 1) for every row: the plain conditional velocity."""
    g = torch.zeros(t.shape[0], 3, dtype=t.dtype, device=t.device)
    g[:, 0] = 1.0
    g[:, 2] = 1.0
    return g


@contextlib.contextmanager
def math_attention(model: nn.Module) -> Iterator[None]:
    """Inside: every Attention of `model` uses the explicit softmax path (needed by torch.func.jvp).
    A model without Attention modules (e.g. an MLP) is left as it is."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    before = [m.use_math for m in layers]
    for m in layers:
        m.use_math = True
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            m.use_math = b


def build_model(model_cfg, in_channels: int, image_size: int | tuple[int, int], num_classes: int,
                guidance_conditioned: bool = False, kernels: str = "reference") -> DiT:
    """A DiT of `model_cfg.size` with patch `model_cfg.patch_size` for images (in_channels, *image_size);
    kernels: the fast paths it takes (TrainConfig.kernels)."""
    if model_cfg.size not in MODEL_SIZES:
        raise ValueError(f"model.size: unknown size {model_cfg.size!r}; known: {', '.join(MODEL_SIZES)}")
    depth, width, heads = MODEL_SIZES[model_cfg.size]
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    return DiT(in_channels, size, num_classes, model_cfg.patch_size, depth, width, heads,
               guidance_conditioned=guidance_conditioned, kernels=kernels)
