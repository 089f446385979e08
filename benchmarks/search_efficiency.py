"""Search efficiency on the main search space (sweeps/curriculum.yaml's): Optuna TPE + curriculum-aware ASHA,
Optuna's GP sampler + ASHA, and random search without early stopping, each repeated with different seeds. Per
search: trials and CPU-seconds until its best fid1 is within 10% of the best fid1 any search found, with the spread
over repetitions, and the median trial's fid1 (where the search spends its trials: less sensitive to one lucky
training seed than the best, see docs/results.md#search-efficiency).

    .venv/bin/python benchmarks/search_efficiency.py [--trials 24] [--reps 3] [--steps 400] [--eval-every 100]
        [--dataset digits] [--searches tpe-asha,gp-asha,random] [--warm-start 12] [--run-dir DIR] [--report]

Every search is a real sweep (Ray Tune, Optuna, Ray Train, MLflow) of the main spec with only the data set, the
trial length, the algorithm, the scheduler, the seed and the trial count changed; its trials are read back from
MLflow. The default data set is sklearn digits at patch 2 (16 tokens), where a trial learns in a few hundred steps;
`--dataset fashion-mnist` runs the main spec's own data (about 4x the time). Each trial is scored as the search
was told (its best fid1 over its evaluations, orchestrator/spec/objectives.py); its cost is the CPU-seconds its workers
logged (`cpu_s`). "Trials to target" counts trials in the order they started. `--report` prints the table again
from the run dir's store without running anything (a cut-off run reports the sweeps it finished). Run again
with the same --run-dir, it keeps every sweep that finished there and runs only the missing ones (so more
repetitions, or another search, can be added later).

`--warm-start N`: after the repetitions, one more TPE + ASHA sweep of N trials (seed 100) warm-started from the
first TPE repetition (`search.warm_start`, its history only: `warm_start_top: 0`, so no earlier configuration is
simply re-run), and how many trials it needs to reach that repetition's best (within 10%) against how many the
repetition itself needed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

MAIN_SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "curriculum.yaml"
SEARCHES = {   # label -> (search.algorithm, early_stopping.scheduler)
    "tpe-asha": ("optuna-tpe", "asha"),
    "gp-asha": ("optuna-gp", "asha"),
    "random": ("random", "none"),
}
PATCH = {"digits": 2, "fashion-mnist": 4}


def spec_text(label: str, rep: int, args, name: str | None = None, trials: int | None = None,
              warm_start: str | None = None) -> str:
    """The main spec with this search's algorithm, scheduler and seed, at the benchmark's data and length."""
    spec = yaml.safe_load(MAIN_SPEC.read_text())
    algorithm, scheduler = SEARCHES[label]
    spec["name"] = name or f"search-{label}-rep{rep}"
    spec["data"] = {"dataset": args.dataset}
    spec["base"]["overrides"] = {"total_steps": args.steps, "model.patch_size": PATCH[args.dataset]}
    spec["train"] = {"workers": 1, "eval_every": args.eval_every, "eval_samples": 500}
    search = spec["search"]
    # every trial a search point, as when the table in docs/results.md was measured (no base reference trial)
    search.update(algorithm=algorithm, seed=rep, num_trials=trials or args.trials, max_concurrent=2,
                  include_base=False)
    if warm_start:
        search.update(warm_start=warm_start, warm_start_top=0)
    search["early_stopping"] = {**search.get("early_stopping", {}), "scheduler": scheduler}
    if scheduler == "none":
        search["early_stopping"].pop("reduction_factor", None)
    return yaml.safe_dump(spec, sort_keys=False)


@dataclass
class Trial:
    fid1: float      # the told value: best fid1 over its evaluations
    cpu_s: float
    steps: float


def sweep_trials(client, experiment_id: str, sweep: str) -> list[Trial]:
    from orchestrator import tracking

    runs = tracking.sweep_trial_runs(client, experiment_id, sweep, order_by=["attributes.start_time ASC"])
    return [Trial(r.data.metrics.get("fid1_best", float("inf")), r.data.metrics.get("cpu_s", 0.0),
                  r.data.metrics.get("step", 0.0)) for r in runs]


def to_target(trials: list[Trial], target: float) -> tuple[int | None, float | None]:
    """(trials, CPU-seconds) spent until the best so far is <= target, in start order; None if never."""
    best, cpu = float("inf"), 0.0
    for i, t in enumerate(trials, 1):
        best, cpu = min(best, t.fid1), cpu + t.cpu_s
        if best <= target:
            return i, cpu
    return None, None


def _spread(values: list[float | None], fmt: str) -> str:
    got = [v for v in values if v is not None]
    missed = len(values) - len(got)
    if not got:
        return "never"
    cell = format(statistics.mean(got), fmt) + (f" +- {format(statistics.stdev(got), fmt)}" if len(got) > 1 else "")
    return cell + (f" ({missed} never)" if missed else "")


def report(results: dict[str, list[list[Trial]]]) -> list[str]:
    """The table: per search, the mean +- std over repetitions (and each repetition's count)."""
    best = min(t.fid1 for reps in results.values() for trials in reps for t in trials)
    target = 1.1 * best
    lines = [f"best fid1 any search found: {best:.2f}; target (within 10%): {target:.2f}",
             "| search | reps | trials each | best fid1 | median trial fid1 | trials to target (per rep) | "
             "CPU-s to target | trials stopped early | CPU-s per search |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, reps in results.items():
        reached = [to_target(trials, target) for trials in reps]
        per_rep = ", ".join(str(n) if n is not None else "never" for n, _ in reached)
        stopped = [sum(t.steps < max(x.steps for x in trials) for t in trials) for trials in reps]
        lines.append(
            f"| {label} | {len(reps)} | {_spread([len(t) for t in reps], '.0f')} "
            f"| {_spread([min(t.fid1 for t in trials) for trials in reps], '.2f')} "
            f"| {_spread([statistics.median(t.fid1 for t in trials) for trials in reps], '.1f')} "
            f"| {_spread([n for n, _ in reached], '.1f')} ({per_rep}) | {_spread([c for _, c in reached], '.0f')} "
            f"| {_spread(stopped, '.1f')} | {_spread([sum(t.cpu_s for t in trials) for trials in reps], '.0f')} |")
    return lines


def warm_start_lines(earlier: list[Trial], warm: list[Trial], earlier_name: str) -> list[str]:
    """Trials each needed to come within 10% of the earlier sweep's best."""
    best = min(t.fid1 for t in earlier)
    target = 1.1 * best
    (n_earlier, cpu_earlier), (n_warm, cpu_warm) = to_target(earlier, target), to_target(warm, target)
    fmt = lambda n, c: "never" if n is None else f"{n} trials ({c:.0f} CPU-s)"   # noqa: E731
    first = earlier[:len(warm)]   # the earlier sweep at the same trial count (its random start-up included)
    median = lambda trials: statistics.median(t.fid1 for t in trials)   # noqa: E731
    return [f"warm start from {earlier_name} (best fid1 {best:.2f}, target {target:.2f}): the warm-started sweep "
            f"reached it in {fmt(n_warm, cpu_warm)} of {len(warm)}, best {min(t.fid1 for t in warm):.2f}; "
            f"{earlier_name} itself needed {fmt(n_earlier, cpu_earlier)}",
            f"median trial fid1: warm-started {median(warm):.1f}, {earlier_name}'s first {len(first)} trials "
            f"{median(first):.1f} (best {min(t.fid1 for t in first):.2f})"]


def main(argv: list[str] | None = None) -> dict[str, list[list[Trial]]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--dataset", choices=sorted(PATCH), default="digits")
    ap.add_argument("--searches", default=",".join(SEARCHES), help=f"comma-separated, of {', '.join(SEARCHES)}")
    ap.add_argument("--warm-start", type=int, default=0, metavar="N",
                    help="then a warm-started TPE + ASHA sweep of N trials from the first TPE repetition")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--report", action="store_true", help="only print the table of the sweeps the run dir has")
    args = ap.parse_args(argv)
    labels = [s for s in args.searches.split(",") if s]
    unknown = [s for s in labels if s not in SEARCHES]
    if unknown:
        ap.error(f"unknown search {unknown[0]!r} (known: {', '.join(SEARCHES)})")

    from bench_sweep import run_sweep  # beside this file (python benchmarks/...)

    from orchestrator import tracking

    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="afsweep-search-"))
    results: dict[str, list[list[Trial]]] = {label: [] for label in labels}
    finished: dict[str, str] = {}   # spec name -> the sweep's name in MLflow

    def read(name: str) -> list[Trial] | None:
        """The newest finished sweep of this name in the run dir's store (every trial ended), if any."""
        uri = tracking.resolve_tracking_uri(None, run_dir)
        if not (run_dir / "mlflow.db").exists() and uri.startswith("sqlite"):
            return None
        client = tracking.client_for(uri, existing=True)
        exp = client.get_experiment_by_name("afsweep")
        names = [] if exp is None else tracking.sweep_names(client, exp.experiment_id, most=1000)
        for sweep in (n for n in names if n.startswith(f"{name}-")):   # newest first
            trials = sweep_trials(client, exp.experiment_id, sweep)
            if trials and (args.report or len(trials) == yaml.safe_load(text_of[name])["search"]["num_trials"]):
                finished[name] = sweep
                return trials
        return None

    text_of: dict[str, str] = {}

    def run_or_read(name: str, text: str) -> list[Trial] | None:
        text_of[name] = text
        done = read(name)   # a run dir that already has this sweep (an earlier, cut-off run) keeps it
        if done is not None or args.report:
            return done
        run = run_sweep(run_dir, name, text)
        finished[name] = run.outcome.sweep_name
        trials = sweep_trials(run.client, run.experiment_id, run.outcome.sweep_name)
        print(f"{name}: {len(trials)} trials, {run.wall_s:.0f} s wall", flush=True)
        return trials

    for rep in range(args.reps):
        for label in labels:
            trials = run_or_read(f"search-{label}-rep{rep}", spec_text(label, rep, args))
            if trials is not None:
                results[label].append(trials)
    warm_lines: list[str] = []
    earlier = "search-tpe-asha-rep0"
    if args.warm_start and earlier in finished:
        warm = run_or_read("search-tpe-asha-warm", spec_text("tpe-asha", 100, args, name="search-tpe-asha-warm",
                                                             trials=args.warm_start, warm_start=finished[earlier]))
        if warm:
            warm_lines = warm_start_lines(results["tpe-asha"][0], warm, finished[earlier])
    results = {k: v for k, v in results.items() if v}
    if not results:
        print(f"search_efficiency: no finished sweeps under {run_dir}", file=sys.stderr)
        raise SystemExit(1)
    # the sweeps' own length (a --report run does not know the --steps they ran with)
    steps = max(t.steps for reps in results.values() for trials in reps for t in trials)
    print(f"\n{args.dataset}, {steps:.0f} steps per trial, run dir {run_dir}")
    for line in report(results) + warm_lines:
        print(line)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
