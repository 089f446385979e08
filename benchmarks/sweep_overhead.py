"""The cost of orchestration on the main spec: a sweep's wall time against the same trials trained bare.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 4] [--steps 1000] [--run-dir DIR] [--no-bare]
    AFSWEEP_LEAN_TRAIN=0 .venv/bin/python benchmarks/sweep_overhead.py ...   # Ray Train's helper actors as Ray
                                                                            # starts them (the cut's A/B)

Runs `sweeps/curriculum.yaml` as a user would (Ray Tune + Optuna, Ray Train with the spec's workers per trial, its
concurrency, MLflow on sqlite, the registry), with only the trial count and length changed and ASHA off (so every
trial trains its whole length and the bare replay below trains the same). Then it trains each trial's
configuration again in this one process (one rank at the global batch on the machine's threads: no Ray, no MLflow,
the same data reader and evaluations) and prints, per trial, where its time in the sweep went:

- start: its MLflow run opened -> its first metric (the step-0 evaluation): Train controller and worker group,
  imports, data, model, the untrained model's evaluation;
- loop: the worker's own clock (`wall_s`) from its loader to its last report;
- close: its last metric -> its run closed (the last checkpoint, the worker group's end);

and for the sweep: its wall time, the trials' bare time, and the difference (Ray's start, the driver's MLflow
bookkeeping, registering the best models, trials sharing the cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

MAIN_SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "curriculum.yaml"


def spec_text(trials: int, steps: int | None) -> str:
    """The main spec, `trials` trials (of `steps` steps, if given), every trial to its end."""
    spec = yaml.safe_load(MAIN_SPEC.read_text())
    spec["name"] = "overhead"
    spec["search"]["num_trials"] = trials
    spec["search"]["include_base"] = False   # `trials` search points, as measured before the base trial existed
    spec["search"]["early_stopping"] = {"scheduler": "none"}
    if steps:
        spec["base"]["overrides"]["total_steps"] = steps
    return yaml.safe_dump(spec, sort_keys=False)


def bare_trial(cfg, manifest_url: str, extractor: str, eval_every: int, eval_samples: int) -> float:
    """Train and evaluate one configuration in this process, as a trial does (step 0, every eval_every, the
    end); seconds."""
    from alphaflow.data import make_train_loader, read_manifest
    from alphaflow.evaluation import LatentDecoder, evaluate_generator
    from alphaflow.metrics import ReferenceStats, load_extractor
    from alphaflow.train_state import TrainState

    t0 = time.perf_counter()
    m = read_manifest(manifest_url)
    train_state = TrainState(cfg, image_shape=tuple(m.image_shape), num_classes=m.num_classes)
    loader = iter(make_train_loader(manifest_url, batch_size=cfg.batch_size, rank=0, world_size=1, seed=cfg.seed))
    ext, ref, decode = load_extractor(extractor), ReferenceStats.load(m.fid_reference), LatentDecoder.of(m)

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


def trial_phases(client, run) -> dict[str, float]:
    """Seconds of one trial's run: start (opened -> first metric), loop (wall_s), close (last metric -> ended)."""
    stamps = [m.timestamp for key in ("fid1", "loss", "wall_s")
              for m in client.get_metric_history(run.info.run_id, key)]
    first, last = min(stamps) / 1000, max(stamps) / 1000
    start, end = run.info.start_time / 1000, (run.info.end_time or max(stamps)) / 1000
    return {"start": first - start, "loop": run.data.metrics.get("wall_s", float("nan")), "close": end - last,
            "run": end - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="steps per trial (default: the main spec's)")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--no-bare", action="store_true", help="only the sweep's own figures (no bare replay)")
    args = ap.parse_args()

    from bench_sweep import run_sweep  # beside this file (python benchmarks/...)

    from orchestrator import tracking
    from orchestrator.platform.ray_adapter import LEAN_TRAIN_ENV, lean_train
    from orchestrator.spec.trial_config import DOMAIN_EXTRACTOR, method_config

    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="afsweep-overhead-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    run = run_sweep(run_dir, "overhead", spec_text(args.trials, args.steps))
    spec, client = run.spec, run.client
    runs = tracking.sweep_trial_runs(client, run.experiment_id, run.outcome.sweep_name,
                                     order_by=["attributes.start_time ASC"])
    manifest = str((run_dir / "data" / spec.data.dataset / "manifest.parquet").resolve())
    extractor = DOMAIN_EXTRACTOR.get(spec.data.dataset, "fashion-mnist-cnn")
    torch.set_num_threads(spec.train.workers * spec.train.threads_per_worker)
    rows = []
    for r in runs:
        swept = {k: yaml.safe_load(r.data.params[k]) for k in r.data.params["swept"].split(",") if k}
        cfg = method_config(spec, {**swept, "seed": int(r.data.params["seed"])})
        bare = (float("nan") if args.no_bare else
                bare_trial(cfg, manifest, extractor, spec.train.eval_every, spec.train.eval_samples))
        rows.append((r.info.run_name, trial_phases(client, r), bare))

    t, c = spec.train, spec.search.max_concurrent
    bare_total = sum(b for *_, b in rows)
    steps = method_config(spec, {}).total_steps
    print(f"\nmain spec, {len(rows)} trials x {steps} steps, {t.workers} Ray Train workers per trial, {c} trials at "
          f"once; bare: one process, {torch.get_num_threads()} threads, one trial at a time")
    print("| trial | start s | loop s | close s | run s | bare s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, p, bare in rows:
        print(f"| {name} | {p['start']:.1f} | {p['loop']:.1f} | {p['close']:.1f} | {p['run']:.1f} | {bare:.1f} |")
    mean = lambda key: sum(p[key] for _, p, _ in rows) / len(rows)   # noqa: E731
    print(f"| mean | {mean('start'):.1f} | {mean('loop'):.1f} | {mean('close'):.1f} | {mean('run'):.1f} "
          f"| {bare_total / len(rows):.1f} |")
    lean = "on" if lean_train() else f"off ({LEAN_TRAIN_ENV}=0)"
    print(f"sweep wall (launch to its summary): {run.wall_s:.1f} s, unused Ray Train actors skipped: {lean}")
    if not args.no_bare:
        print(f"the trials bare, one after another: {bare_total:.1f} s; overhead {run.wall_s - bare_total:+.0f} s "
              f"({run.wall_s / bare_total:.2f}x)")


if __name__ == "__main__":
    main()
