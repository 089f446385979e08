"""The cost of orchestration: a sweep's wall time against the same trials trained bare, in this process.

    python benchmarks/sweep_overhead.py [--trials 2] [--steps 60] [--run-dir /tmp/afsweep-overhead]

Runs a sweep (Ray Tune + Optuna, Ray Train with 2 gloo workers per trial, MLflow on sqlite), then trains each of
its trials again with the same configuration in one process (one rank at the global batch: no Ray, no MLflow, the
same data reader, the same evaluations), and prints a table.
"""

from __future__ import annotations

import time

import torch

SPEC = """
name: overhead
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: {steps}}}
train: {{workers: 2, eval_every: {eval_every}, eval_samples: 500}}
search:
  num_trials: {trials}
  max_concurrent: 1
  space:
    optim.lr: {{type: loguniform, low: 5.0e-4, high: 2.0e-3}}
  early_stopping: {{scheduler: none}}
"""


def bare_trial(cfg, manifest_url: str, eval_every: int, eval_samples: int) -> float:
    """Train and evaluate one configuration in this process; seconds."""
    from alphaflow.data import make_train_loader, read_manifest
    from alphaflow.evaluation import LatentDecoder
    from alphaflow.evaluation import evaluate_generator
    from alphaflow.metrics import ReferenceStats, load_extractor
    from alphaflow.train_state import TrainState

    t0 = time.perf_counter()
    m = read_manifest(manifest_url)
    train_state = TrainState(cfg, image_shape=tuple(m.image_shape), num_classes=m.num_classes)
    loader = iter(make_train_loader(manifest_url, batch_size=cfg.batch_size, rank=0, world_size=1, seed=cfg.seed))
    ext, ref, decode = load_extractor("fashion-mnist-cnn"), ReferenceStats.load(m.fid_reference), LatentDecoder.of(m)

    def evaluate():
        evaluate_generator(lambda z, y, nfe: train_state.sample(z, y, nfe=nfe), decode,
                           tuple(m.image_shape), m.num_classes, ext, ref, n=eval_samples)

    evaluate()
    while train_state.step < cfg.total_steps:
        x, y = next(loader)
        train_state.train_step(x, y)
        if train_state.step % eval_every == 0 or train_state.step == cfg.total_steps:
            evaluate()
    return time.perf_counter() - t0


def main() -> None:
    from alphaflow.config import apply_overrides
    from bench_sweep import run_sweep, sweep_args   # beside this file (python benchmarks/...)
    from orchestrator import tracking
    from orchestrator.sweep.driver import base_train_config

    args, run_dir, manifest = sweep_args(trials=2, steps=60, eval_every=30, prefix="afsweep-overhead-")
    run = run_sweep(run_dir, "spec", SPEC.format(manifest=manifest, steps=args.steps, trials=args.trials,
                                                 eval_every=args.eval_every))
    spec, outcome, client, sweep_wall = run.spec, run.outcome, run.client, run.wall_s
    exp_id = run.experiment_id
    runs = tracking.sweep_trial_runs(client, exp_id, outcome.sweep_name)
    torch.set_num_threads(2)
    rows = []
    for r in runs:
        cfg = apply_overrides(base_train_config(spec), {"optim.lr": float(r.data.params["optim.lr"]),
                                                         "seed": int(r.data.params["seed"])})
        bare = bare_trial(cfg, manifest, args.eval_every, spec.train.eval_samples)
        rows.append((r.info.run_name, r.data.metrics.get("wall_s", float("nan")), bare))

    bare_total = sum(b for _, _, b in rows)
    print(f"\nsweep of {len(rows)} trials x {args.steps} steps, 2 Ray Train workers per trial, 1 trial at a time")
    print(f"| {'trial':<22} | {'in-sweep train loop s':>21} | {'bare in-process s':>17} |")
    print(f"|{'-' * 24}|{'-' * 23}|{'-' * 19}|")
    for name, wall, bare in rows:
        print(f"| {name:<22} | {wall:>21.1f} | {bare:>17.1f} |")
    print(f"| {'sweep wall (launch)':<22} | {sweep_wall:>21.1f} | {bare_total:>17.1f} |")
    print(f"orchestration overhead: sweep wall / sum of bare trials = {sweep_wall / bare_total:.2f}x "
          f"(+{sweep_wall - bare_total:.0f} s)")


if __name__ == "__main__":
    main()
