"""Fused CPU kernels for the step's hot elementwise ops (docs/internals.md#the-fast-step).

ATen's tanh-approximated GELU costs several times its exact GELU on CPU (forward+backward of 1568 x 1536 floats,
one thread: 11.4 ms vs 4.2 ms exact, measured 2026-12-03). The same function written as x * sigmoid(2u),
u = sqrt(2/pi) (x + 0.044715 x^3) (since (1 + tanh u) / 2 = sigmoid(2u)), compiled by Inductor into one loop, and its
derivative into another, take it to 6.8 ms. In a whole tiny or S step GELU is only ~2%, so the gain is small
(docs/internals.md#the-fast-step). Agreement with ATen: within 1e-6 absolute in fp32 (tests/method/test_fast_step.py).

Compiling a kernel costs a few seconds once per process (Inductor's cache makes later processes faster); where
torch.compile is unavailable (no C++ compiler) the same formulas run eagerly, which is slower but equal.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)

_K = math.sqrt(2.0 / math.pi)
_A = 0.044715


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x * (2.0 * _K + (2.0 * _K * _A) * x * x))


def _gelu_grad(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g * GELU'(x): with s = sigmoid(2u), d/dx [x s] = s + 2 x s (1 - s) u'(x), u' = K (1 + 3 A x^2)."""
    s = torch.sigmoid(x * (2.0 * _K + (2.0 * _K * _A) * x * x))
    return g * (s + x * s * (1.0 - s) * (2.0 * _K + (6.0 * _K * _A) * x * x))


_kernels: dict[str, object] = {}


def _kernel(name: str, fn):
    """fn compiled once per process and dtype (on flat contiguous tensors, so that shapes and strides never cause
    a recompilation), or fn itself where compilation fails."""
    if name not in _kernels:
        try:
            compiled = torch.compile(fn, dynamic=True, fullgraph=True)
            with torch.no_grad():
                compiled(*(torch.linspace(-3, 3, 7) for _ in range(fn.__code__.co_argcount)))
            _kernels[name] = compiled
        except Exception as e:   # no compiler, unsupported platform: the eager formula is the same function
            _fall_back(name, fn, e)
    return _kernels[name]


def _fall_back(name: str, fn, e: Exception) -> None:
    log.warning("fast_ops: torch.compile of %s unavailable (%s); using eager ops", name,
                str(e).splitlines()[0] if str(e) else type(e).__name__)
    _kernels[name] = fn


def _flat_call(name: str, fn, *tensors: torch.Tensor) -> torch.Tensor:
    # detached, flat and outside autocast: the compiled kernels then see one graph per dtype (Dynamo guards on
    # requires_grad, rank, autocast state and aliasing would otherwise recompile them)
    shape = tensors[0].shape
    flat = [a.detach().reshape(-1) for a in tensors]
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        try:
            out = _kernel(name, fn)(*flat)
        except Exception as e:   # a dtype or platform the compiled kernel cannot take
            _fall_back(name, fn, e)
            out = fn(*flat)
    return out.view(shape)


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _flat_call("gelu", _gelu, x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _flat_call("gelu_grad", _gelu_grad, x, g.to(x.dtype))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU(x, approximate='tanh') through the fused kernels (differentiable once; not by forward-mode AD)."""
    if torch.compiler.is_compiling():
        return torch.nn.functional.gelu(x, approximate="tanh")
    return _GeluTanh.apply(x)


def gelu_tanh_tangent_eager(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """GELU'(x) dx by the same formula, eager (a model without the fused GELU: nothing to compile)."""
    return _gelu_grad(x, dx.to(x.dtype))


def gelu_tanh_tangent(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """GELU'(x) dx (tanh approximation): the tangent of GELU at x along dx, the same kernel as its gradient."""
    if x.device.type != "cpu":
        return _gelu_grad(x, dx)
    return _flat_call("gelu_grad", _gelu_grad, x, dx.to(x.dtype))
