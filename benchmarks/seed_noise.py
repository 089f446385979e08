"""How much of a trial's fid1 is its training seed: the same configurations trained again with other seeds.

    .venv/bin/python benchmarks/seed_noise.py --run-dir DIR --prefix search-random-rep1

Every sweep in the run dir's MLflow store whose name starts with PREFIX counts (for example a search repetition
run again, cut off or not: a seeded sampler proposes the same configurations, each trial gets another training
seed). Trials that ran their whole length are grouped by their searched parameters; the table gives the spread
within a configuration (the seeds) against the spread between configurations, and the best few configurations'
scores. A search's "best fid1" is a minimum over such draws: a target within the seed spread is partly luck.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path


def within_and_between(groups: dict[tuple, list[float]]) -> tuple[float, float, int]:
    """(pooled within-configuration std, std of the configurations' means, configurations with >= 2 seeds)."""
    multi = [v for v in groups.values() if len(v) >= 2]
    if not multi:
        return float("nan"), float("nan"), 0
    dof = sum(len(v) - 1 for v in multi)
    pooled = (sum((len(v) - 1) * statistics.variance(v) for v in multi) / dof) ** 0.5
    between = statistics.stdev([statistics.mean(v) for v in multi]) if len(multi) > 1 else float("nan")
    return pooled, between, len(multi)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--prefix", required=True, help="sweep name prefix, e.g. search-random-rep1")
    ap.add_argument("--metric", default="fid1_best")
    args = ap.parse_args(argv)

    from orchestrator import tracking

    client = tracking.client_for(tracking.resolve_tracking_uri(None, args.run_dir), existing=True)
    exp = client.get_experiment_by_name("afsweep")
    sweeps = [n for n in tracking.sweep_names(client, exp.experiment_id, most=1000) if n.startswith(args.prefix)]
    groups: dict[tuple, list[float]] = defaultdict(list)
    for sweep in sweeps:
        runs = tracking.sweep_trial_runs(client, exp.experiment_id, sweep)
        length = max((r.data.metrics.get("total_steps", r.data.metrics.get("step", 0)) for r in runs), default=0)
        for r in runs:
            value, step = r.data.metrics.get(args.metric), r.data.metrics.get("step", 0)
            if value is None or step < length:
                continue
            swept = sorted(k for k in r.data.params.get("swept", "").split(",") if k and k != "seed")
            groups[tuple((k, r.data.params[k]) for k in swept)].append(value)
    pooled, between, n = within_and_between(groups)
    print(f"{len(sweeps)} sweeps named {args.prefix}*: {len(groups)} configurations, {n} trained with >= 2 seeds")
    print(f"| {args.metric} | std |\n| --- | --- |\n"
          f"| within a configuration (training seeds, pooled) | {pooled:.2f} |\n"
          f"| between configurations (their means) | {between:.2f} |")
    print("best configurations, each seed's score:")
    for key, values in sorted(groups.items(), key=lambda kv: min(kv[1]))[:5]:
        print("  " + ", ".join(f"{k}={v}" for k, v in key) + ": " + ", ".join(f"{x:.1f}" for x in values))


if __name__ == "__main__":
    main()
