"""The papers' ordering at toy scale, read back from a finished method x seed grid sweep (sweeps/paper_check.yaml):
per method the seeds it ran, the mean and standard deviation (ddof 1) of fid1 and fid2, its mean difference to
MeanFlow with a 95% interval paired by seed, and one plain line saying whether its ordering against MeanFlow holds.

    .venv/bin/afsweep launch sweeps/paper_check.yaml
    .venv/bin/python benchmarks/paper_check.py [--sweep NAME] [--run-dir afsweep-runs] [--tracking-uri URI]
        [--experiment afsweep] [--reference meanflow]

The sweep's trials are its MLflow child runs: `method` and `seed` are their params, and each trial's score is the
value `afsweep best` ranks it by and the search was told (orchestrator/spec/objectives.py): its best over its
evaluations, `fid1_best` and `fid2_best`. Only completed trials count; the others are listed as left out. The
difference to the reference is taken seed by seed (trials at one seed share initial weights, data order and
per-step noise seeds) and its interval is the t interval of those differences: mean +- t(0.975, n - 1) sd /
sqrt(n). An ordering holds when that interval excludes 0. Without --sweep: the experiment's latest sweep.

Also printed, for a built-in data set: the per-class Gaussian baseline at the trials' N, extractor and reference
statistics (N draws, balanced over the classes, from a Gaussian fitted to each class's training pixels): a model
that does not beat it has learned no more than each class's mean and covariance.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

METRICS = ("fid1", "fid2")
LEVEL = 0.95


@dataclass
class TrialScore:
    method: str
    seed: int
    run_name: str
    values: dict[str, float]          # metric -> the trial's told value (fid1_best, ...)
    untrained_best: bool = False      # its best fid1 was the untrained network's (step 0)


@dataclass
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def holds(self) -> bool:
        """The difference has a sign at this level: the interval excludes 0."""
        return self.n >= 2 and (self.high < 0 or self.low > 0)


@dataclass
class MethodRow:
    method: str
    seeds: list[int]
    stats: dict[str, tuple[float, float]]                            # metric -> (mean, std)
    to_reference: dict[str, Interval] = field(default_factory=dict)  # empty for the reference itself


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired_interval(diffs: list[float], level: float = LEVEL) -> Interval:
    """The t interval of the mean of per-seed differences (no interval from fewer than 2)."""
    from scipy.stats import t

    n = len(diffs)
    if n < 2:
        return Interval(diffs[0] if diffs else math.nan, math.nan, math.nan, n)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def read_sweep(runs, sweep: str) -> tuple[list[TrialScore], list[str]]:
    """The completed trials' scores among a sweep's trial runs, and "<trial>: why" for each trial left out."""
    from orchestrator import tracking
    from orchestrator.spec.objectives import told_key

    scores, left_out = [], []
    for run in runs:
        name, params, metrics = run.info.run_name, run.data.params, run.data.metrics
        state = run.data.tags.get(tracking.STATUS_TAG, "running")
        values = {m: metrics.get(told_key(m)) for m in METRICS}
        if "method" not in params or "seed" not in params:
            raise ValueError(f"sweep '{sweep}': trial {name} has no method or seed param; paper_check reads a grid "
                             f"over search.space.method x seed (sweeps/paper_check.yaml)")
        if state != "completed":
            left_out.append(f"{name} ({params['method']}, seed {params['seed']}): {state}")
        elif not all(v is not None and math.isfinite(v) for v in values.values()):
            left_out.append(f"{name}: no finite {' and '.join(told_key(m) for m in METRICS)}")
        else:
            scores.append(TrialScore(params["method"], int(params["seed"]), name, values,
                                     metrics.get(f"{told_key('fid1')}_step", 1) == 0))
    return scores, left_out


def method_rows(scores: list[TrialScore], reference: str, order: list[str] | None = None) -> list[MethodRow]:
    """One row per method, in `order` (the spec's) and then by name; each compared with the reference at the seeds
    both ran."""
    rank = {m: i for i, m in enumerate(order or [])}
    by_method: dict[str, dict[int, TrialScore]] = {}
    for s in sorted(scores, key=lambda s: (rank.get(s.method, len(rank)), s.method)):
        by_method.setdefault(s.method, {})[s.seed] = s
    if reference not in by_method:
        raise ValueError(f"--reference {reference}: no completed trial of that method (methods: "
                         f"{', '.join(by_method) or 'none'})")
    ref = by_method[reference]
    rows = []
    for method, runs in by_method.items():
        seeds = sorted(runs)
        row = MethodRow(method, seeds, {m: mean_std([runs[s].values[m] for s in seeds]) for m in METRICS})
        if method != reference:
            paired = [s for s in seeds if s in ref]
            row.to_reference = {m: paired_interval([runs[s].values[m] - ref[s].values[m] for s in paired])
                                for m in METRICS}
        rows.append(row)
    return rows


def spec_method_order(client, parent_run_id: str) -> list[str]:
    """The methods in the order the sweep's frozen spec lists them in search.space.method (empty if it does not)."""
    import tempfile

    import yaml

    try:
        with tempfile.TemporaryDirectory() as tmp:
            spec = yaml.safe_load(Path(client.download_artifacts(parent_run_id, "spec.yaml", tmp)).read_text())
        return [str(v) for v in spec["search"]["space"]["method"]["values"]]
    except Exception:   # an older or hand-made sweep: methods by name
        return []


def _interval_cell(iv: Interval | None) -> str:
    if iv is None:
        return "reference"
    if iv.n < 2:
        return f"{iv.mean:+.2f} (n={iv.n}, no interval)"
    return f"{iv.mean:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]"


def format_table(rows: list[MethodRow], reference: str) -> list[str]:
    head = ["method", "seeds"] + [f"{m} {s}" for m in METRICS for s in ("mean", "std")] + \
           [f"{m} - {reference} [95%]" for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, str(len(r.seeds))] + [f"{v:.2f}" for m in METRICS for v in r.stats[m]] + \
                [_interval_cell(r.to_reference.get(m)) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ordering_line(row: MethodRow, reference: str) -> str:
    """Plainly, for each metric: better, worse, or not settled against the reference (lower FID is better)."""
    parts = []
    for m in METRICS:
        iv = row.to_reference[m]
        if iv.n < 2:
            parts.append(f"{m}: {iv.n} paired seed(s), no interval: not settled")
            continue
        side = "lower (better)" if iv.mean < 0 else "higher (worse)"
        verdict = "excludes 0: the ordering holds" if iv.holds() else "includes 0: not settled"
        parts.append(f"{m} {side} by {abs(iv.mean):.2f}, 95% interval [{iv.low:+.2f}, {iv.high:+.2f}] {verdict}")
    return f"{row.method} vs {reference} ({row.to_reference['fid1'].n} paired seeds): " + "; ".join(parts)


def class_gaussian_baseline(manifest_url: str, n: int, extractor_id: str, seed: int = 0) -> float | None:
    """FID-N of the per-class Gaussian against the sweep data's reference statistics; None for a data set that is
    not built in (its training images are not at hand)."""
    import numpy as np

    from alphaflow.data import read_manifest
    from alphaflow.data.sources import BUILTIN_DATASETS, load_builtin
    from alphaflow.metrics import ReferenceStats, frechet_distance, gaussian_stats, load_extractor
    from alphaflow.metrics.calibration import class_gaussian_sample

    manifest = read_manifest(manifest_url)
    base = manifest.dataset_id.split(":")[0]
    if base not in BUILTIN_DATASETS:
        return None
    images, labels = load_builtin(base, "train")
    classes, i = len(np.unique(labels)), np.arange(n)
    per_class = -(-n // classes)
    draws, _ = class_gaussian_sample(images, labels, per_class, np.random.default_rng(seed))
    balanced = draws[(i % classes) * per_class + i // classes]   # labels i mod classes, as the evaluation's
    extractor, reference = load_extractor(extractor_id), ReferenceStats.load(manifest.fid_reference)
    mu, sigma = gaussian_stats(extractor.features(balanced))
    return float(frechet_distance(mu, sigma, reference.mu, reference.sigma))


def _fail(message: str) -> None:
    print(f"paper_check: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> list[MethodRow]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", default=None, help="the sweep's name (default: the experiment's latest)")
    ap.add_argument("--run-dir", type=Path, default=Path("afsweep-runs"))
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or the run dir's store")
    ap.add_argument("--experiment", default="afsweep")
    ap.add_argument("--reference", default="meanflow", help="the method every other is compared with")
    args = ap.parse_args(argv)

    import os

    from orchestrator import tracking

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")   # one spec.yaml: no progress bar
    uri = tracking.resolve_tracking_uri(args.tracking_uri, args.run_dir)
    try:
        client = tracking.client_for(uri, existing=True)
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            raise ValueError(f"MLflow at {uri}: no experiment named '{args.experiment}'")
        sweep = args.sweep or tracking.latest_sweep(client, exp.experiment_id)
        parent = tracking.find_sweep_run(client, exp.experiment_id, sweep) if sweep else None
        if parent is None:
            raise ValueError(f"MLflow at {uri}, experiment '{args.experiment}': no sweep named '{sweep}'")
        runs = tracking.sweep_trial_runs(client, exp.experiment_id, sweep, order_by=["attributes.start_time ASC"])
        scores, left_out = read_sweep(runs, sweep)
        rows = method_rows(scores, args.reference, spec_method_order(client, parent))
    except (ValueError, tracking.TrackingError) as e:
        _fail(str(e))
    params = client.get_run(parent).data.params
    first = runs[0].data.params   # search_runs returns each run's params: no second query
    scoring = ", ".join(x for x in (f"FID-{first[tracking.EVAL_N_PARAM]}" if tracking.EVAL_N_PARAM in first else "",
                                    first.get(tracking.EXTRACTOR_PARAM, "")) if x)
    print(f"sweep {sweep}: {len(scores)} completed trials of {params.get('num_trials', '?')}, "
          f"{first.get('total_steps', '?')} steps each; each trial's best fid1 / fid2 over its evaluations"
          + (f" ({scoring})" if scoring else ""))
    for line in format_table(rows, args.reference):
        print(line)
    for row in rows:
        if row.method != args.reference:
            print(ordering_line(row, args.reference))
    for why in left_out:
        print(f"left out: {why}")
    n, extractor_id = first.get(tracking.EVAL_N_PARAM), first.get(tracking.EXTRACTOR_PARAM)
    if params.get("manifest") and n and extractor_id:
        base = class_gaussian_baseline(params["manifest"], int(n), extractor_id)
        if base is not None:
            print(f"per-class Gaussian baseline ({params.get('dataset', '?')}, FID-{n}, {extractor_id}): {base:.2f}")
    untrained = [s.run_name for s in scores if s.untrained_best]
    if untrained:
        print(f"note: {len(untrained)} trial(s) scored best untrained (fid1 best at step 0), trained too briefly "
              f"to improve: {', '.join(untrained)}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
