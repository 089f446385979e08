"""`afsweep preview SPEC`: what a sweep would do, before it costs anything.

The planned trials (drawn from the same Optuna sampler and seed the sweep uses, so TPE's first random draws match),
the ASHA rungs, a cost estimate from a few timed training steps on this machine, and a PNG of the alpha, ratio_fm
and beta schedules of the sampled configurations.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import torch

from alphaflow.config import ConfigError, apply_overrides
from alphaflow.loss_weights import beta_weight, progress_s
from alphaflow.metrics import load_extractor
from alphaflow.schedules import schedule_value
from alphaflow.timesteps import expected_one_minus_dt
from alphaflow.train_state import TrainState
from orchestrator.spec import SweepSpec
from orchestrator.spec.objectives import search_objectives
from orchestrator.spec.trial_config import domain_extractor, method_config
from orchestrator.sweep.bounds import grace_period, max_total_steps
from orchestrator.sweep.search import base_values, define_by_run, make_sampler


@dataclass
class Plan:
    trials: list[dict[str, Any]]      # the searched parameters of each planned trial
    configs: list[Any]                # the TrainConfig of each
    rungs: list[int]                  # ASHA milestones in steps (empty without ASHA)
    grace: int
    base: bool = False                # trial 0 is the base setting (search.include_base): its values, unsearched
    step_s: float | None = None       # measured seconds per optimizer step of one worker
    eval_s: float | None = None       # estimated seconds per evaluation


def plan_trials(spec: SweepSpec, n: int | None = None) -> Plan:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n = n or spec.search.num_trials
    modes = search_objectives(spec.search).values()
    study = optuna.create_study(sampler=make_sampler(spec),
                                directions=["minimize" if m == "min" else "maximize" for m in modes])
    for point in spec.search.points_to_evaluate:
        study.enqueue_trial(point)
    define = define_by_run(spec)
    trials, configs = [], []
    if spec.search.include_base:   # the sweep's first trial; Optuna's suggestions start at trial 1
        trials.append(base_values(spec))
        configs.append(method_config(spec, {}, trial_number=0))
    for number in range(len(trials), n):
        t = study.ask()
        constants = define(t)
        params = {**t.params, **constants}
        study.tell(t, state=optuna.trial.TrialState.PRUNED)  # no score yet: keep the sampler from learning
        trials.append(params)
        configs.append(method_config(spec, params, trial_number=number))
    grace = grace_period(spec, echo=lambda *_: None)
    rungs = asha_rungs(grace, max_total_steps(spec), spec.search.early_stopping.reduction_factor) \
        if spec.search.early_stopping.scheduler == "asha" else []
    return Plan(trials=trials, configs=configs, rungs=rungs, grace=grace, base=spec.search.include_base)


def asha_rungs(grace: int, max_t: int, rf: float) -> list[int]:
    """ASHA's milestones (Ray's rule: grace * rf^k below max_t)."""
    count = int(math.log(max_t / grace) / math.log(rf) + 1) if max_t >= grace else 0
    return [int(grace * rf ** k) for k in range(count)]


def time_steps(cfg, image_shape, num_classes: int, batch: int, steps: int = 3) -> float:
    """Seconds per optimizer step of one worker at this config's stages, averaged over alpha=1 and alpha=0 steps."""
    x = torch.randn(batch, *image_shape)
    y = torch.randint(0, num_classes, (batch,))
    costs = []
    for alpha in (1.0, 0.0):  # the curriculum spends its time between these two stages
        try:
            c = apply_overrides(cfg, {"alpha.kind": "constant", "alpha.start": alpha, "alpha.end": alpha})
        except ConfigError:  # a member bound to one stage (iMF: alpha = 0 only) is timed at its own
            continue
        train_state = TrainState(c, image_shape=image_shape, num_classes=num_classes)
        train_state.train_step(x, y)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            train_state.train_step(x, y)
        costs.append((time.perf_counter() - t0) / steps)
    return sum(costs) / len(costs)


# what a sweep pays beyond its steps and evaluations, measured on this 2-core machine (main spec, idle machine;
# docs/spec.md "preview"): Ray's local cluster, the study and the parent run before the first trial, and the
# registration after the last; per trial: its Train controller and worker group, process group, loader and run
SWEEP_FIXED_S = 25.0
TRIAL_START_S = 20.0
METRICS_S = 0.6   # per scored sampler at 1000 samples: FID, precision/recall, KID on the features


def time_evaluation(spec: SweepSpec, cfg, image_shape, num_classes: int, probe: int = 250) -> float:
    """Seconds of one evaluation on rank 0: every sampler it scores (1 and 2 NFE, each extra EMA half-life at
    1 NFE, the N-step probe), each one's images through the extractor, and the metrics, at train.eval_samples."""
    n = spec.train.eval_samples
    state = TrainState(cfg, image_shape=image_shape, num_classes=num_classes)
    noise, y = torch.randn(probe, *image_shape), torch.randint(0, num_classes, (probe,))
    state.sample(noise[:8], y[:8], nfe=1)  # warm-up
    t0 = time.perf_counter()
    state.sample(noise, y, nfe=1)
    one_nfe = time.perf_counter() - t0
    samplers = 2 + len(cfg.ema.extra_half_lives) + (1 if spec.train.eval_nstep else 0)
    forwards = 1 + 2 + len(cfg.ema.extra_half_lives) + spec.train.eval_nstep
    try:
        extractor = load_extractor(domain_extractor(spec.data.dataset))
        images = np.random.default_rng(0).integers(0, 256, (probe, *image_shape), dtype=np.uint8)
        extractor.features(images[:8])
        t0 = time.perf_counter()
        extractor.features(images)
        features = time.perf_counter() - t0
    except Exception:  # another extractor or image shape: its cost is not timed here
        features = 0.0
    return (forwards * one_nfe + samplers * features) * n / probe + samplers * METRICS_S * n / 1000


def estimate_cost(spec: SweepSpec, plan: Plan, image_shape, num_classes: int) -> dict[str, float]:
    """Wall, CPU and GPU seconds of the sweep: steps and evaluations at the times measured here, slowed by the
    trials' processes sharing this machine's cores, in waves of max_concurrent trials, plus the fixed costs of a
    sweep and of each trial. Every trial is counted to its last step: ASHA can only make it shorter."""
    train = spec.train
    torch.set_num_threads(train.threads_per_worker)
    per_rank = max(1, plan.configs[0].batch_size // train.workers)
    plan.step_s = time_steps(plan.configs[0], tuple(image_shape), num_classes, per_rank)
    plan.eval_s = time_evaluation(spec, plan.configs[0], tuple(image_shape), num_classes)
    concurrency = min(spec.search.max_concurrent, len(plan.configs))
    # each trial's workers share the cores with the other trials running at the same time (a GPU trial's step is
    # its GPU's, not shared)
    busy = concurrency * train.workers * train.threads_per_worker
    share = 1.0 if train.use_gpu else max(1.0, busy / (os.cpu_count() or 1))
    trial_s = []
    for c in plan.configs:
        evaluations = c.total_steps // train.eval_every + 1 + (c.total_steps % train.eval_every > 0)
        trial_s.append((c.total_steps * plan.step_s + evaluations * plan.eval_s) * share + TRIAL_START_S)
    waves = [trial_s[i:i + concurrency] for i in range(0, len(trial_s), concurrency)]
    wall = SWEEP_FIXED_S + sum(max(w) for w in waves)
    trial_steps = sum(c.total_steps for c in plan.configs)
    worker_s = sum(trial_s)
    return {"trial_steps": trial_steps, "step_s": plan.step_s, "eval_s": plan.eval_s, "share": share,
            "cpu_s": worker_s * train.workers * train.threads_per_worker / share,
            "gpu_s": worker_s * train.workers if train.use_gpu else 0.0,
            "wall_s": wall}


def schedules_png(plan: Plan, path: str | Path, max_lines: int = 8) -> str:
    """Three panels: alpha(step) and ratio_fm(step) of each sampled configuration, and the Delta-t weight beta."""
    matplotlib.use("Agg")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, cfg in enumerate(plan.configs[:max_lines]):
        steps = np.linspace(0, cfg.total_steps, 200)
        axes[0].plot(steps, [schedule_value(cfg.alpha, int(s), cfg.total_steps) for s in steps], label=f"trial {i}")
        axes[1].plot(steps, [schedule_value(cfg.ratio_fm, int(s), cfg.total_steps) for s in steps], label=f"trial {i}")
        if cfg.loss.beta:
            lam = 1.0 / expected_one_minus_dt(cfg.time)
            dt = np.linspace(0, 1, 50)
            for frac, style in ((0.0, "-"), (0.5, "--"), (1.0, ":")):
                s = progress_s(frac, cfg.loss.beta_k)
                axes[2].plot(dt, beta_weight(torch.from_numpy(dt), s, lam).numpy(), style, color=f"C{i}",
                             label=f"trial {i}, {int(frac * 100)}% of training")
    for r in plan.rungs:
        for ax in axes[:2]:
            ax.axvline(r, color="grey", lw=0.8, ls=":")
    axes[0].set(title="alpha (dotted: ASHA rungs)", xlabel="step", ylim=(-0.05, 1.05))
    axes[1].set(title="ratio_fm (fraction of r = t rows)", xlabel="step", ylim=(-0.05, 1.05))
    axes[2].set(title="beta(dt, s) on r < t rows", xlabel="dt = t - r")
    if not axes[2].lines:
        axes[2].text(0.5, 0.5, "beta weighting off in every sampled trial", ha="center", va="center",
                     transform=axes[2].transAxes)
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
