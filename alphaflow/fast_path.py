"""Which fast paths a run takes (docs/internals.md#the-fast-step), decided in one place from `kernels`.

    paths = FastPath.for_kernels(config.kernels)     # "fast", "fused" or "reference"

The DiT's classes (Attention, DiTBlock, FinalLayer, DiT), the losses and TrainState read its fields. What depends
on the call rather than on the run (the input's device, the autocast dtype, AFSWEEP_FP32_STREAM) is decided by its
two methods at each forward, so that a model moved to another device or run under another autocast still takes
the right path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

FP32_STREAM_ENV = "AFSWEEP_FP32_STREAM"   # "1": keep the fp32 residual stream on CPU (for A/B runs)

KERNELS = ("fast", "fused", "reference")


@dataclass(frozen=True)
class FastPath:
    """The switches; all off (REFERENCE) is the eager step that the others are measured against."""

    fused_gelu: bool = False        # the compiled CPU tanh-GELU of alphaflow.fast_ops (~2% of a step, compiles once)
    cpu_math_attention: bool = False   # softmax(QK^T) V on CPU in bf16: the fused kernel's bf16 backward is ~20x slower
    addcmul: bool = False           # modulation and gated residual as one addcmul each: one pass over x, not two
    stream: bool = False            # the blocks' tokens and condition contiguous, bf16 under CPU bf16 autocast
    tangent_pass: bool = False      # the alpha = 0 and iMF JVP by alphaflow.tangent, not torch.func.jvp
    flat_params: bool = False       # parameters and gradients in two flat buffers (alphaflow/flat_params.py)
    fused_adam: bool = False        # one Adam kernel over all parameters instead of a loop of small ops per tensor

    @classmethod
    def for_kernels(cls, kernels: str) -> FastPath:
        """fast: every path but the compiled GELU; fused: all of them; reference: none."""
        if kernels not in KERNELS:
            raise ValueError(f"kernels: {kernels!r} is not one of {', '.join(KERNELS)}")
        on = kernels != "reference"
        return cls(fused_gelu=kernels == "fused", cpu_math_attention=on, addcmul=on, stream=on, tangent_pass=on,
                   flat_params=on, fused_adam=on)

    def explicit_attention(self, x: torch.Tensor, q: torch.Tensor | None = None) -> bool:
        """Explicit softmax attention for this call: on CPU when q is bf16 (autocast casts at qkv; q None: the
        choice regardless of q). In fp32 the explicit path is 1-7% slower there, so fp32 keeps the fused kernel."""
        return self.cpu_math_attention and x.device.type == "cpu" and (q is None or q.dtype == torch.bfloat16)

    def stream_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """bf16 for the token stream and the condition on CPU under bf16 autocast, else None (the stream stays fp32,
        as on CUDA). On CPU an op with inputs of two dtypes first copies the other one, so an fp32 residual stream
        between bf16 matmuls pays a cast at every LayerNorm input, modulation and residual add.
        AFSWEEP_FP32_STREAM=1 keeps it fp32."""
        if (self.stream and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16
                and os.environ.get(FP32_STREAM_ENV) != "1"):
            return torch.bfloat16
        return None


REFERENCE = FastPath()   # every path off: the eager step the others are measured against
