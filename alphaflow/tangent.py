"""The DiT's forward pass with its forward-mode derivative carried alongside (docs/internals.md#the-fast-step).

    u, du = dit_jvp(model, x, r, t, y, dx, dr, dt, g=None)

u = model(x, r, t, y, g) for all B rows, with its graph to the parameters, computed exactly as the model's own
forward (fused attention included). du = d/de model(x + e dx, r + e dr, t + e dt, y, g) at e = 0 for the first
n = dx.shape[0] rows, computed under no-grad from the primal's detached intermediates: every alpha-Flow target
that uses du/dt stops its gradient, so the tangent needs no graph.

Why not torch.func.jvp: on CPU it costs ~3.5 forwards, needs the explicit-softmax attention, and records the
tangent's ops in the autograd graph. Here the tangent costs about one no-grad forward of the n rows (each linear
layer is applied to the tangent without its bias; attention's tangent reuses the softmax probabilities), and the
backward runs through the primal only. tests/method/test_fast_step.py checks du against torch.func.jvp (fp32,
<= 1e-5 relative) and against finite differences (float64).

Per-layer rules (primal p, tangent d): linear d -> W d; LayerNorm (no affine) d -> rstd (d - mean d - y mean(y d));
modulate x (1 + scale) + shift -> dx (1 + scale) + x dscale + dshift; SiLU -> s (1 + x (1 - s)) d; GELU -> GELU'(x) d;
softmax attention O = P V with P = softmax(Q K^T / sqrt(h)): dO = (P * dS) V - rowsum(P * dS) O + P dV,
dS = (dQ K^T + Q dK^T) / sqrt(h).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from alphaflow.fast_ops import gelu_tanh_tangent, gelu_tanh_tangent_eager
from alphaflow.model import (
    FREQ_DIM,
    DiT,
    TanhGELU,
    gated_add,
    guidance_features,
    modulate,
    no_guidance,
    timestep_features,
)


def supports(model: nn.Module) -> bool:
    """Whether dit_jvp can differentiate `model` (a DiT, not wrapped)."""
    return isinstance(model, DiT)


def _linear(layer: nn.Linear, d: torch.Tensor) -> torch.Tensor:
    return F.linear(d, layer.weight.detach())


def _silu_tangent(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s)) * d


def _layer_norm(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(LayerNorm(x) over the last dim without affine, with graph; its detached 1 / std per row)."""
    y, _, rstd = torch.native_layer_norm(x, (x.shape[-1],), None, None, eps)
    return y, rstd.detach()


def _layer_norm_tangent(y: torch.Tensor, rstd: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return rstd * (d - d.mean(-1, keepdim=True) - y * (y * d).mean(-1, keepdim=True))


def _time_embed(emb, t: torch.Tensor, dt: torch.Tensor | None, n: int):
    """(embedding with graph, its tangent for the first n rows along dt; None when dt is None)."""
    lin1, _, lin2 = emb.mlp
    shape = t.shape
    feats = timestep_features(t.reshape(-1)).reshape(shape[0], -1).to(lin1.weight.dtype)
    h = lin1(feats)
    out = lin2(F.silu(h))
    if dt is None:
        return out, None
    with torch.no_grad():
        # d/dt [cos(t f), sin(t f)] = [-sin(t f) f, cos(t f) f]
        half = FREQ_DIM // 2
        f = torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) *
                      torch.arange(half, dtype=torch.float64) / half).to(feats.dtype).to(t.device)
        tf = feats[:n].reshape(n, -1, FREQ_DIM)
        cos, sin = tf[..., :half], tf[..., half:]
        dfeat = torch.cat([-sin * f, cos * f], dim=-1) * dt[:n].reshape(n, -1, 1).to(feats.dtype)
        dh = _linear(lin1, dfeat.reshape(n, -1))
        d = _linear(lin2, _silu_tangent(h[:n].detach(), dh))
    return out, d


def _modulated_norm(x, dx, shift, scale, dshift, dscale, n: int, eps: float, fused: bool):
    y, rstd = _layer_norm(x, eps)
    out = modulate(y, shift, scale, fused)
    with torch.no_grad():
        yd = y[:n].detach()
        dy = _layer_norm_tangent(yd, rstd[:n], dx)
        dout = dy * (1 + scale[:n, None].detach()) + yd * dscale[:, None] + dshift[:, None]
    return out, dout


def _attention(attn, x, dx, n: int):
    b, m, w = x.shape
    h = attn.heads
    qkv = attn.qkv(x).reshape(b, m, 3, h, w // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scale = q.shape[-1] ** -0.5
    if attn.explicit(x, q):   # the same path as the model's forward (its probabilities then serve the tangent)
        p_all = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
        o = p_all @ v
    else:
        p_all = None
        o = F.scaled_dot_product_attention(q, k, v)
    out = attn.proj(o.transpose(1, 2).reshape(b, m, w))
    with torch.no_grad():
        dq, dk, dv = _linear(attn.qkv, dx).reshape(n, m, 3, h, w // h).permute(2, 0, 3, 1, 4).unbind(0)
        qn, kn, vn, on = q[:n].detach(), k[:n].detach(), v[:n].detach(), o[:n].detach()
        if p_all is None:
            p = torch.softmax((qn @ kn.transpose(-2, -1)) * scale, dim=-1)
        else:
            p = p_all[:n].detach()
        pds = p * ((dq @ kn.transpose(-2, -1) + qn @ dk.transpose(-2, -1)) * scale)
        do = pds @ vn - pds.sum(-1, keepdim=True) * on + p @ dv
        dout = _linear(attn.proj, do.transpose(1, 2).reshape(n, m, w))
    return out, dout


def _mlp(mlp, x, dx):
    fc1, _, fc2 = mlp
    h = fc1(x)
    a = mlp[1](h)
    out = fc2(a)
    with torch.no_grad():
        n = dx.shape[0]
        tangent = gelu_tanh_tangent if isinstance(mlp[1], TanhGELU) else gelu_tanh_tangent_eager
        dout = _linear(fc2, tangent(h[:n].detach(), _linear(fc1, dx)))
    return out, dout


def _modulation(mod, c, dc, n: int):
    """adaLN modulation Linear(SiLU(c)) and its tangent."""
    out = mod(c)
    with torch.no_grad():
        dout = _linear(mod[1], _silu_tangent(c[:n].detach(), dc))
    return out, dout


def _block(block, x, dx, c, dc, n: int):
    fused = block.fast_path.addcmul
    m, dm = _modulation(block.modulation, c, dc, n)
    shift1, scale1, gate1, shift2, scale2, gate2 = m.chunk(6, dim=-1)
    dshift1, dscale1, dgate1, dshift2, dscale2, dgate2 = dm.chunk(6, dim=-1)
    a_in, da_in = _modulated_norm(x, dx, shift1, scale1, dshift1, dscale1, n, block.norm1.eps, fused)
    a, da = _attention(block.attn, a_in, da_in, n)
    x2 = gated_add(x, gate1, a, fused)
    with torch.no_grad():
        dx2 = dx + dgate1[:, None] * a[:n].detach() + gate1[:n, None].detach() * da
    m_in, dm_in = _modulated_norm(x2, dx2, shift2, scale2, dshift2, dscale2, n, block.norm2.eps, fused)
    f, df = _mlp(block.mlp, m_in, dm_in)
    out = gated_add(x2, gate2, f, fused)
    with torch.no_grad():
        dout = dx2 + dgate2[:, None] * f[:n].detach() + gate2[:n, None].detach() * df
    return out, dout


def dit_jvp(model: DiT, x: torch.Tensor, r: torch.Tensor, t: torch.Tensor, y: torch.Tensor, dx: torch.Tensor,
            dr: torch.Tensor, dt: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(model(x, r, t, y, g) for all rows with graph, its tangent along (dx, dr, dt) for the first dx.shape[0] rows,
    detached). g (the guidance condition) is held fixed."""
    n = dx.shape[0]
    with torch.no_grad():
        d_tokens = F.conv2d(dx.to(model.patch_embed.weight.dtype), model.patch_embed.weight.detach(),
                            stride=model.patch).flatten(2).transpose(1, 2)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed.to(x.dtype)

    c_t, dc_t = _time_embed(model.t_embed, t, dt, n)
    c_h, dc_h = _time_embed(model.dt_embed, t - r, dt - dr, n)
    c = c_t + c_h + model.y_embed(y)
    if model.g_embed is not None:
        gg = no_guidance(t) if g is None else g.to(t.dtype)
        c = c + model.g_embed(guidance_features(gg))   # fixed along the tangent
    dc = dc_t + dc_h
    tokens, c = model.to_stream(x, tokens, c)   # the same layout and dtypes as the model's forward
    with torch.no_grad():
        d_tokens, dc = model.to_stream(x, d_tokens, dc)

    for block in model.blocks:
        tokens, d_tokens = _block(block, tokens, d_tokens, c, dc, n)

    fin = model.final
    mod, dmod = _modulation(fin.modulation, c, dc, n)
    shift, scale = mod.chunk(2, dim=-1)
    dshift, dscale = dmod.chunk(2, dim=-1)
    a, da = _modulated_norm(tokens, d_tokens, shift, scale, dshift, dscale, n, fin.norm.eps,
                            fin.fast_path.addcmul)
    out = fin.linear(a)
    with torch.no_grad():
        dout = _linear(fin.linear, da)
    return model.unpatchify(out), model.unpatchify(dout).detach()
