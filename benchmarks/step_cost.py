"""Time per optimizer step of each alpha-Flow stage on CPU, as a table.

    .venv/bin/python benchmarks/step_cost.py [--threads 1] [--steps 20] [--sizes tiny,S]

Stages: plain forward+backward (no objective), alpha = 1 (flow matching), alpha = 0.5 (one extra no-grad pass
on the r < t rows), alpha = 0 (MeanFlow JVP). ratio_fm 0.5, no CFG, Fashion-MNIST shape 1x28x28 patch 4 for tiny;
S runs on the same shape with a small batch. Targets: alpha=0.5 <= 1.35x alpha=1; JVP <= 2.0x alpha=1.
"""

from __future__ import annotations

import argparse
import time

import torch

from alphaflow.config import apply_overrides
from alphaflow.presets import get_preset
from alphaflow.train_state import TrainState


def bench(size: str, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """CPU seconds (process time: robust to other processes on a shared machine) per step of each stage: the stages run round-robin (`steps` each per round) so that load from
    other processes hits all of them alike; each stage's fastest round is kept."""
    shape = (1, 28, 28)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    fns = {}
    for name, alpha in (("alpha=1", 1.0), ("alpha=0.5", 0.5), ("alpha=0 (JVP)", 0.0)):
        cfg = apply_overrides(get_preset("tiny-cpu"), {
            "model.size": size, "batch_size": batch, "diagnostics_every": 0, "total_steps": 10 ** 6,
            "alpha.kind": "constant", "alpha.start": alpha, "ratio_fm.start": 0.5})
        tr = TrainState(cfg, shape, 10)
        fns[name] = lambda tr=tr: tr.train_step(x, y)
    model, opt = tr.model, tr.optimizer
    t = torch.rand(batch)

    def plain():
        loss = (model(x, t * 0.5, t, y) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    fns["plain fwd+bwd"] = plain
    for fn in fns.values():   # warm-up
        fn()
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            for _ in range(steps):
                fn()
            best[name] = min(best[name], (time.process_time() - t0) / steps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="steps per stage per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="tiny:32,S:8", help="size:per-rank batch, comma separated")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  ratio_fm=0.5  image 1x28x28 patch 4  no CFG  "
          f"(best of {args.rounds} interleaved rounds of {args.steps} steps)")
    print(f"{'size':<6}{'batch':>6}  {'stage':<15}{'ms/step':>9}{'steps/s':>9}{'x alpha=1':>11}")
    for item in args.sizes.split(","):
        size, batch = item.split(":")
        res = bench(size, int(batch), args.steps, args.rounds)
        base = res["alpha=1"]
        for stage in ("plain fwd+bwd", "alpha=1", "alpha=0.5", "alpha=0 (JVP)"):
            s = res[stage]
            print(f"{size:<6}{batch:>6}  {stage:<15}{s * 1e3:>9.1f}{1 / s:>9.1f}{s / base:>11.2f}")


if __name__ == "__main__":
    main()
