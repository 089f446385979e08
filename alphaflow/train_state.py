"""The state of one alpha-Flow training run (network, optimizer, EMAs, step) and its one optimizer step.

The loop around it lives with its caller (the Ray Train worker, the benchmarks): this module holds what a
checkpoint holds and the step that advances it, data-parallel without a DDP wrapper.

When torch.distributed is initialised, rank 0's parameters are broadcast at start and every step all-reduces the
averaged gradients (and the loss, so that all ranks see a non-finite loss and stop together). Extra no-grad
passes and the JVP pass therefore need no special care. The random draws of step i on rank k come from a
generator seeded by (seed, k, i): distinct per rank, and a resumed run repeats them exactly.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import torch
import torch.distributed as dist

from alphaflow.checkpoint import load_state, save_state
from alphaflow.config import config_to_dict
from alphaflow.ema import EMA
from alphaflow.fast_path import FastPath
from alphaflow.flat_params import FlatParameters
from alphaflow.model import build_model
from alphaflow.objective import loss_for
from alphaflow.sampling import sample as sample_fn
from alphaflow.sampling import sample_n_step
from alphaflow.schedules import schedule_value

EVAL_NOISE_SEED = 424242   # fresh noise of 2-NFE consistency sampling


class NonFiniteLossError(RuntimeError):
    """'non-finite loss at step N: ...', raised before the optimizer touches the weights."""


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 natively: CUDA with bf16 support, or a CPU with AMX tiles (Linux
    /proc/cpuinfo flag amx_bf16). Elsewhere bf16 autocast is emulated and slower than fp32."""
    return _native_bf16(torch.device(device).type)


@functools.cache
def _native_bf16(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


def sampling_guidance(cfg, batch: int, device) -> torch.Tensor | None:
    """g (B, 3) = (omega, t_min, t_max) of cfg.sampling for a guidance-conditioned model, else None."""
    if not cfg.guidance.conditioned:
        return None
    s = cfg.sampling
    return torch.tensor([[s.guidance, s.guidance_t_min, s.guidance_t_max]], device=device).expand(batch, 3)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + step) % (2 ** 63 - 1)


class TrainState:
    def __init__(self, cfg, image_shape: tuple[int, ...], num_classes: int, device: str = "cpu"):
        self.cfg = cfg
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        fast_path = FastPath.for_kernels(cfg.kernels)
        with torch.random.fork_rng(devices=[]):   # initial weights from cfg.seed, caller's RNG untouched
            torch.manual_seed(cfg.seed)
            self.model = build_model(cfg.model, self.image_shape[0], self.image_shape[1:], self.num_classes,
                                     guidance_conditioned=cfg.guidance.conditioned, kernels=cfg.kernels)
        self.model.to(self.device)
        if self.distributed:
            with torch.no_grad():
                for p in self.model.parameters():
                    dist.broadcast(p.data, src=0)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # flat: Adam, the clip, the EMA and the all-reduce each run once over one tensor; the reference keeps one
        # per tensor
        self.flat = FlatParameters(self.params) if fast_path.flat_params else None
        self.opt_params = [self.flat.param] if self.flat is not None else self.params
        o = cfg.optim
        self.optimizer = torch.optim.Adam(self.opt_params, lr=o.lr, betas=(o.beta1, o.beta2),
                                          weight_decay=o.weight_decay, fused=fast_path.fused_adam)
        self.ema = EMA(self.model, [cfg.ema.half_life, *cfg.ema.extra_half_lives], ramp=cfg.ema.ramp,
                       flat=self.flat)
        self.step = 0

    # --- training -------------------------------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        warm = self.cfg.optim.warmup_steps
        return self.cfg.optim.lr * (min(1.0, (step + 1) / warm) if warm > 0 else 1.0)

    @property
    def precision(self) -> str:
        """fp32 or bf16: cfg.precision with auto resolved for this device."""
        if self.cfg.precision != "auto":
            return self.cfg.precision
        return "bf16" if native_bf16(self.device) else "fp32"

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        cfg, step = self.cfg, self.step
        alpha = schedule_value(cfg.alpha, step, cfg.total_steps)
        ratio_fm = schedule_value(cfg.ratio_fm, step, cfg.total_steps)
        gen = torch.Generator().manual_seed(_step_seed(cfg.seed, self.rank, step))
        diag = cfg.diagnostics_every > 0 and step % cfg.diagnostics_every == 0
        x, y = x.to(self.device, torch.float32), y.to(self.device)

        self.model.train()
        with self._autocast():
            loss, logs = loss_for(cfg)(self.model, x, y, alpha=alpha, ratio_fm=ratio_fm, config=cfg,
                                       num_classes=self.num_classes, generator=gen,
                                       progress=step / cfg.total_steps, grad_diagnostics=diag)
        self.optimizer.zero_grad(set_to_none=False)
        if self.flat is not None and not self.flat.is_intact():
            self.flat.reattach_grads()
        loss.backward()   # a non-finite loss gives non-finite gradients, caught below before the update
        loss_avg = self._average_gradients(loss.detach().float())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.opt_params, cfg.optim.grad_clip)
        # the step's one host sync: the update must not run on a non-finite loss or gradient
        loss_value, grad_norm = torch.stack([loss_avg, grad_norm.float()]).tolist()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"non-finite loss at step {step}: loss={loss_value} (alpha={alpha:.4g}, "
                                     f"ratio_fm={ratio_fm:.3g}, lr={self.lr_at(step):.3g})")
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite loss at step {step}: gradient norm {grad_norm} "
                                     f"(loss={loss_value:.4g}, alpha={alpha:.4g})")
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.model, self.step)
        logs.update(loss=loss_value, alpha=alpha, ratio_fm=ratio_fm, lr=lr, grad_norm=grad_norm)
        return logs

    def _average_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        """All-reduce mean of the gradients and the loss in one flat buffer; returns the mean loss (a tensor)."""
        if self.flat is not None:
            if not self.distributed:
                return loss
            buf = self.flat.grad_and_loss
            buf[-1] = loss
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= self.world_size
            return buf[-1].clone()
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not self.distributed:
            return loss
        flat = torch.cat([p.grad.flatten() for p in self.params] + [loss.view(1).to(self.params[0].dtype)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n
        return flat[-1]

    # --- inference ------------------------------------------------------------------------------------------

    def sample(self, noise: torch.Tensor, y: torch.Tensor, nfe: int = 1, ema: bool = True,
               half_life: float | None = None) -> torch.Tensor:
        """Generated latents (normalised space) from `noise` (B, C, H, W) and labels y, on the EMA weights;
        a guidance-conditioned model samples at cfg.sampling's guidance scale and interval."""
        s = self.cfg.sampling
        g = sampling_guidance(self.cfg, noise.shape[0], self.device)
        gen = torch.Generator().manual_seed(EVAL_NOISE_SEED)
        self.model.eval()
        ctx = self.ema.swapped(self.model, half_life) if ema else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                out = sample_fn(self.model, noise.to(self.device, torch.float32), y, nfe=nfe, two_nfe=s.two_nfe,
                                t_mid=s.t_mid, generator=gen, g=g)
        finally:
            self.model.train()
        return out.float().cpu()

    def sample_velocity(self, noise: torch.Tensor, y: torch.Tensor, steps: int, ema: bool = True,
                        half_life: float | None = None) -> torch.Tensor:
        """`steps` Euler steps of the instantaneous velocity u(z, t, t): a probe of how well v is learned."""
        self.model.eval()
        ctx = self.ema.swapped(self.model, half_life) if ema else contextlib.nullcontext()
        try:
            with ctx, torch.no_grad():
                out = sample_n_step(self.model, noise.to(self.device, torch.float32), y, steps,
                                    g=sampling_guidance(self.cfg, noise.shape[0], self.device))
        finally:
            self.model.train()
        return out.float().cpu()

    # --- checkpoints ----------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str, extra: dict[str, Any] | None = None) -> None:
        save_state(path, {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": self.ema.state_dict(self.model),
            "ema_primary": self.ema.primary,
            "optimizer": self.optimizer_state(),
            "step": self.step,
            "rng": {"torch": torch.get_rng_state()},
            "config": config_to_dict(self.cfg),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "extra": extra or {},
        })

    def optimizer_state(self) -> dict:
        """The optimizer's state_dict in the per-parameter layout (as kernels: reference has it)."""
        state = self.optimizer.state_dict()
        return self.flat.split_optimizer_state(state) if self.flat is not None else state

    def load_checkpoint(self, path: str) -> dict[str, Any]:
        """Restore model, EMAs, optimizer and step; returns the `extra` saved with it."""
        state = load_state(path)
        shape = tuple(int(v) for v in state["image_shape"])
        if shape != self.image_shape or int(state["num_classes"]) != self.num_classes:
            raise ValueError(f"{path}: checkpoint is for images {shape} with {state['num_classes']} classes, "
                             f"this run has {self.image_shape} with {self.num_classes}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(self.model, state["ema"])
        opt = state["optimizer"]
        if self.flat is not None:   # checkpoints keep the per-parameter layout, whichever kernels wrote them
            opt = self.flat.join_optimizer_state(opt)
        self.optimizer.load_state_dict(opt)
        self.step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
        return state.get("extra", {})
