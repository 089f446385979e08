"""Optuna TPE + ASHA against random search without early stopping, on the same space and budget of trials:
how many trials each needs before its best fid1 is within 10% of the best fid1 either found, and the training
steps each spent.

    python benchmarks/search_efficiency.py [--trials 8] [--steps 200] [--run-dir DIR]
"""

from __future__ import annotations


SPEC = """
name: {name}
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: {steps}}}
train: {{workers: 2, eval_every: {eval_every}, eval_samples: 500}}
search:
  algorithm: {algorithm}
  seed: 0
  num_trials: {trials}
  max_concurrent: 2
  space:
    alpha.k_s: {{type: uniform, low: 0.0, high: 0.3}}
    alpha.k_e: {{type: uniform, low: 0.4, high: 0.6}}
    alpha.gamma: {{type: loguniform, low: 5.0, high: 50.0}}
    ratio_fm.start: {{type: uniform, low: 0.25, high: 0.75}}
    optim.lr: {{type: loguniform, low: 1.0e-4, high: 1.0e-2}}
  early_stopping: {{scheduler: {scheduler}}}
"""


def trial_history(client, experiment_id: str, sweep: str) -> list[tuple[float, float]]:
    """(fid1_best, last step) of each trial, in the order the trials started."""
    runs = client.search_runs([experiment_id], f"tags.`afsweep.sweep` = '{sweep}' and tags.`afsweep.kind` = 'trial'",
                              order_by=["attributes.start_time ASC"])
    return [(r.data.metrics.get("fid1_best", float("inf")), r.data.metrics.get("step", 0.0)) for r in runs]


def trials_to_reach(history: list[tuple[float, float]], target: float) -> int | None:
    best = float("inf")
    for i, (fid, _) in enumerate(history, 1):
        best = min(best, fid)
        if best <= target:
            return i
    return None


def main() -> None:
    from bench_sweep import run_sweep, sweep_args   # beside this file (python benchmarks/...)

    args, run_dir, manifest = sweep_args(trials=8, steps=200, eval_every=50, prefix="afsweep-search-")
    results = {}
    for label, algorithm, scheduler in (("optuna-tpe + asha", "optuna-tpe", "asha"), ("random", "random", "none")):
        run = run_sweep(run_dir, algorithm, SPEC.format(name=algorithm, manifest=manifest, steps=args.steps,
                                                        eval_every=args.eval_every, algorithm=algorithm,
                                                        trials=args.trials, scheduler=scheduler))
        results[label] = (trial_history(run.client, run.experiment_id, run.outcome.sweep_name), run.wall_s,
                          run.outcome.pruned)

    best = min(f for hist, _, _ in results.values() for f, _ in hist)
    target = 1.1 * best
    print(f"\n{args.trials} trials x {args.steps} steps each; best fid1 found by either: {best:.2f}; "
          f"target (within 10%): {target:.2f}")
    print(f"| {'search':<18} | {'best fid1':>9} | {'trials to target':>16} | {'steps spent':>11} | "
          f"{'stopped early':>13} | {'wall s':>7} |")
    print(f"|{'-' * 20}|{'-' * 11}|{'-' * 18}|{'-' * 13}|{'-' * 15}|{'-' * 9}|")
    for label, (hist, wall, pruned) in results.items():
        reached = trials_to_reach(hist, target)
        print(f"| {label:<18} | {min(f for f, _ in hist):>9.2f} | {str(reached or 'never'):>16} | "
              f"{int(sum(s for _, s in hist)):>11} | {pruned:>13} | {wall:>7.0f} |")


if __name__ == "__main__":
    main()
