"""Named TrainConfigs: the CPU default of the sweeps and the published settings (docs/method.md#presets).

Published runs use batch 256, Adam(0.9, 0.95), lr 1e-4 with a 10K-step warm-up, grad clip 16, bf16, EMA half-life
6931 steps (about 0.9999) ramped as min(6931, 0.05 step), logit-normal(-0.4, 1) times, adaptive weight c = 1e-3,
label dropout 0.1, and 25% of rows with r < t (ratio_fm = 0.75, MeanFlow's published choice).
"""

from __future__ import annotations

from collections.abc import Callable

from alphaflow.config import (
    EMAConfig,
    GuidanceConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TimeConfig,
    TrainConfig,
)


def _published(size: str, patch: int, steps: int, alpha: ScheduleConfig, guidance: GuidanceConfig,
               loss: LossConfig | None = None) -> TrainConfig:
    return TrainConfig(
        seed=0, total_steps=steps, batch_size=256, precision="bf16", diagnostics_every=1000,
        model=ModelConfig(size=size, patch_size=patch),
        alpha=alpha,
        ratio_fm=ScheduleConfig(kind="constant", start=0.75, end=0.75),
        time=TimeConfig(sampler="logit_normal", mu=-0.4, sigma=1.0),
        loss=loss or LossConfig(adaptive_p=1.0, adaptive_c=1e-3, clip=4.0),
        guidance=guidance,
        optim=OptimConfig(lr=1e-4, beta1=0.9, beta2=0.95, warmup_steps=10_000, grad_clip=16.0),
        ema=EMAConfig(half_life=6931.0, ramp=0.05),
    )


def _sigmoid(k_s: float, k_e: float) -> ScheduleConfig:
    """The official alpha curriculum 1 -> 0, k_s/k_e as fractions of total_steps."""
    return ScheduleConfig(kind="sigmoid", start=1.0, end=0.0, k_s=k_s, k_e=k_e, unit="fraction", gamma=25.0,
                          eta=5e-3)


MEANFLOW_ALPHA = ScheduleConfig(kind="constant", start=0.0, end=0.0)   # alpha = 0 throughout: the JVP target
NO_CFG = GuidanceConfig(omega=1.0, kappa=0.0, t_min=0.0, t_max=1.0, label_dropout=0.1)
CFG_B = GuidanceConfig(omega=1.0, kappa=0.5, t_min=0.0, t_max=1.0, label_dropout=0.1)     # scale 2.0
CFG_XL = GuidanceConfig(omega=0.2, kappa=0.92, t_min=0.0, t_max=0.75, label_dropout=0.1)  # scale 2.5


def tiny_cpu() -> TrainConfig:
    """The sweeps' default on a 2-core CPU (Fashion-MNIST 1x28x28, patch 4 -> 49 tokens): the tiny DiT, a
    sigmoid alpha curriculum 1 -> 0 over the first half, half the rows at r = t, no CFG, a short ramped EMA;
    bf16 autocast where the CPU has AMX (the step then costs ~0.7x, benchmarks/step_cost.py)."""
    return TrainConfig(
        seed=0, total_steps=300, batch_size=64, precision="auto", diagnostics_every=50,
        model=ModelConfig(size="tiny", patch_size=4),
        alpha=ScheduleConfig(kind="sigmoid", start=1.0, end=0.0, k_s=0.1, k_e=0.5, unit="fraction",
                             gamma=25.0, eta=5e-3),
        ratio_fm=ScheduleConfig(kind="constant", start=0.5, end=0.5),
        time=TimeConfig(sampler="logit_normal", mu=-0.4, sigma=1.0),
        loss=LossConfig(adaptive_p=1.0, adaptive_c=1e-3, clip=4.0),
        guidance=GuidanceConfig(omega=1.0, kappa=0.0, label_dropout=0.0),
        optim=OptimConfig(lr=1e-3, beta1=0.9, beta2=0.95, warmup_steps=20, grad_clip=1.0),
        ema=EMAConfig(half_life=25.0, ramp=0.1),
    )


PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "tiny-cpu": tiny_cpu,
    # alpha-Flow B/2 without CFG: sigmoid 0 -> 400K of 400K
    "alphaflow-B2": lambda: _published("B", 2, 400_000, _sigmoid(0.0, 1.0), NO_CFG),
    # alpha-Flow B/2 with CFG: 0 -> 1.2M of 1.2M
    "alphaflow-B2-cfg": lambda: _published("B", 2, 1_200_000, _sigmoid(0.0, 1.0), CFG_B),
    # alpha-Flow XL/2 with CFG: 600K -> 1M of 1.2M
    "alphaflow-XL2-cfg": lambda: _published("XL", 2, 1_200_000, _sigmoid(0.5, 1_000_000 / 1_200_000), CFG_XL),
    "meanflow-B2": lambda: _published("B", 2, 1_200_000, MEANFLOW_ALPHA, CFG_B),
    "meanflow-XL2": lambda: _published("XL", 2, 1_200_000, MEANFLOW_ALPHA, CFG_XL),
    # arXiv 2511.19065 at B/4: MeanFlow + MinSNR on r = t rows + the progressive Delta-t weight beta (k = 1)
    "meanflow-minsnr-beta-B4": lambda: _published("B", 4, 1_200_000, MEANFLOW_ALPHA, CFG_B,
                                                  LossConfig(adaptive_p=1.0, adaptive_c=1e-3, clip=4.0,
                                                             minsnr_gamma=5.0, beta=True, beta_k=1.0)),
    "imf-B2": lambda: imf("B", 2),
}

# names that meant something else once: a clear error instead of a silently different method
RENAMED = {"improved-meanflow-B4": "meanflow-minsnr-beta-B4 (arXiv 2511.19065; Improved MeanFlow, arXiv "
                                   "2512.02012, is imf-B2)"}


def imf(size: str, patch: int) -> TrainConfig:
    """Improved MeanFlow (arXiv 2512.02012), its B/2 ablation setting: the v-loss on V_theta with the network's
    own u(z, t, t) as the JVP tangent, guidance as a condition (omega ~ 1/omega on [1, 8], random interval), half
    the rows at r = t, logit-normal(-0.4, 1), batch 256 for 240 ImageNet epochs (1.2M steps), Adam (0.9, 0.95) lr 1e-4,
    EMA 0.9999, adaptive weight p = 1, c = 0.01 on the summed error (its official code)."""
    return TrainConfig(
        seed=0, total_steps=1_200_000, batch_size=256, precision="bf16", diagnostics_every=0,
        model=ModelConfig(size=size, patch_size=patch),
        alpha=ScheduleConfig(kind="constant", start=0.0, end=0.0),
        ratio_fm=ScheduleConfig(kind="constant", start=0.5, end=0.5),
        time=TimeConfig(sampler="logit_normal", mu=-0.4, sigma=1.0),
        loss=LossConfig(objective="imf", adaptive_p=1.0, adaptive_c=1e-2, reduce="sum"),
        guidance=GuidanceConfig(omega=1.0, kappa=0.0, label_dropout=0.1, conditioned=True, omega_max=8.0,
                                omega_power=1.0, random_interval=True),
        optim=OptimConfig(lr=1e-4, beta1=0.9, beta2=0.95, warmup_steps=10_000, grad_clip=16.0),
        ema=EMAConfig(half_life=6931.0, ramp=0.05),
    )


def get_preset(name: str) -> TrainConfig:
    """A fresh TrainConfig for a named preset; KeyError naming the known ones otherwise."""
    if name in RENAMED:
        raise KeyError(f"preset {name!r} is now called {RENAMED[name]}")
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]()
