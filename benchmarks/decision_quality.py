"""What a confirmation stage buys: a ground-truth table of configurations x seeds, and replays of two ways to
decide on it at equal CPU-seconds.

    .venv/bin/python benchmarks/decision_quality.py build [--configs 16] [--seeds 6] [--steps 200]
        [--eval-every 50] [--eval-samples 500] [--out benchmarks/data/decision_quality.jsonl]
    .venv/bin/python benchmarks/decision_quality.py replay [--table F] [--replays 2000] [--search 6]
        [--top 2] [--confirm-seeds 3]

`build` trains every (configuration, seed) of the main search space (sweeps/curriculum.yaml's, sampled by a seeded
random sampler; each configuration as `method_config` builds it) on sklearn digits at patch 2, in this process with
the library's own step and evaluation (no Ray: the table is about the method's noise, not the platform's). Each run
logs fid1 at every evaluation (the sweep's fixed evaluation noise), keeps its best-fid1 checkpoint as a trial does,
and scores that checkpoint again on fresh noise (the confirmation stage's re-scoring, the same seed), with its
CPU-seconds. One JSON line per run; the file's first line is the command that built it. A run already in the file
is kept (a cut-off build continues).

`replay` decides on the table many times, each time with other configuration orders and seed draws:
- plain search: configurations once each with one random seed, as many as the budget allows, the pick the best
  single draw (its best fid1 over its evaluations, as afsweep registers today), reported as that number;
- search + confirmation: fewer configurations once each, then the top K and the base (configuration 0) trained
  again on the same M other seeds; the pick the best mean of the re-scored scores, reported as that mean.
Both spend the same CPU-seconds (the plain search's count of configurations is the largest whose cost does not
exceed the other's). The truth of a configuration is the mean of its re-scored fid1 over all its seeds. Printed per
method: regret (the pick's true mean minus the best true mean), bias (reported minus the pick's true mean), how
often the pick is within 5% of the best, with their spread over replays.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "decision_quality.jsonl"
MAIN_SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "curriculum.yaml"


# ---------------------------------------------------------------- the table


def table_configs(n: int, steps: int, seed: int = 0) -> list[dict]:
    """n configurations of the main space (searched values), configuration 0 the base setting (nothing searched)."""
    import optuna

    from orchestrator.spec import load_spec
    from orchestrator.sweep.search import define_by_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(MAIN_SPEC)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    define = define_by_run(spec)
    out = [{}]
    while len(out) < n:
        t = study.ask()
        constants = define(t)   # draws the trial's params first
        out.append({**t.params, **constants})
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
    return out


def train_run(params: dict, seed: int, steps: int, eval_every: int, eval_samples: int, data, extractor,
              reference) -> dict:
    """One (configuration, seed): fid1 at every evaluation, the best checkpoint re-scored on fresh noise, CPU-s."""
    import torch

    from alphaflow.config import apply_overrides
    from alphaflow.evaluation import evaluate_generator
    from alphaflow.train_state import TrainState
    from orchestrator.spec import load_spec, method_config
    from orchestrator.trial.worker import RESCORE_SEED

    x, y, decode = data
    spec = load_spec(MAIN_SPEC)
    cfg = apply_overrides(method_config(spec, params), {"total_steps": steps, "model.patch_size": 2, "seed": seed})
    t0 = time.process_time()
    state = TrainState(cfg, image_shape=tuple(x.shape[1:]), num_classes=10)
    order = torch.Generator().manual_seed(seed)
    fid1, best, best_path = {}, math.inf, Path(tempfile.mkdtemp(prefix="dq-")) / "best.pt"

    def score(noise_seed: int) -> float:
        return evaluate_generator(lambda z, yy, nfe: state.sample(z, yy, nfe=nfe), decode, tuple(x.shape[1:]), 10,
                                  extractor, reference, eval_samples, seed=noise_seed).metrics["fid1"]

    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=order)
        state.train_step(x[idx], y[idx])
        if step % eval_every == 0 or step == steps:
            fid1[step] = score(1234)   # the evaluation noise of every training-time evaluation
            if fid1[step] < best:
                best = fid1[step]
                state.save_checkpoint(str(best_path))
    state.load_checkpoint(str(best_path))
    rescored = score(RESCORE_SEED)
    return {"fid1": {str(k): v for k, v in fid1.items()}, "fid1_best": best, "fid1_rescored": rescored,
            "cpu_s": time.process_time() - t0}


def digits_data():
    """Normalised identity-codec latents of digits' train split, its decoder, the digits CNN and the test set's
    reference statistics (what `afsweep data prepare digits` records)."""
    import torch

    from alphaflow.data import get_codec
    from alphaflow.data.sources import load_builtin
    from alphaflow.evaluation import LatentDecoder
    from alphaflow.metrics import compute_reference_stats, load_extractor

    images, labels = load_builtin("digits", "train")
    latents = get_codec("identity").encode(images)
    mean, std = latents.mean(axis=(0, 2, 3)), latents.std(axis=(0, 2, 3))
    x = torch.from_numpy((latents - mean[None, :, None, None]) / std[None, :, None, None]).float()
    extractor = load_extractor("digits-cnn")
    test, _ = load_builtin("digits", "test")
    reference = compute_reference_stats(test, extractor, "digits:test")
    return (x, torch.from_numpy(labels), LatentDecoder("identity", mean, std)), extractor, reference


def build(args) -> None:
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["config"], r["seed"]) for r in read_table(out)} if out.exists() else set()
    if not out.exists():
        out.write_text(json.dumps({"command": " ".join(["benchmarks/decision_quality.py", *sys.argv[1:]])}) + "\n")
    configs = table_configs(args.configs, args.steps)
    data, extractor, reference = digits_data()
    for seed in range(args.seeds):          # seed-major: a cut-off build has every configuration at some seeds
        for i, params in enumerate(configs):
            if (i, seed) in done:
                continue
            row = train_run(params, seed, args.steps, args.eval_every, args.eval_samples, data, extractor,
                            reference)
            with open(out, "a") as f:
                f.write(json.dumps({"config": i, "seed": seed, "params": params, **row}) + "\n")
            print(f"config {i:>2} seed {seed}: fid1_best {row['fid1_best']:.2f} rescored "
                  f"{row['fid1_rescored']:.2f} ({row['cpu_s']:.0f} CPU-s)", flush=True)


def read_table(path: Path) -> list[dict]:
    lines = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [r for r in lines if "config" in r]


# ---------------------------------------------------------------- the replay


@dataclass
class Decision:
    pick: int
    reported: float
    cpu_s: float


def plain_search(runs: dict, order: list[int], seed_of: dict[int, int], budget: float | None = None) -> Decision:
    """Configurations once each in `order` (each at its drawn seed) until the budget; the best single draw."""
    spent, best = 0.0, None
    for c in order:
        r = runs[c][seed_of[c]]
        if budget is not None and spent + r["cpu_s"] > budget and best is not None:
            break
        spent += r["cpu_s"]
        if best is None or r["fid1_best"] < best[1]:
            best = (c, r["fid1_best"])
    return Decision(pick=best[0], reported=best[1], cpu_s=spent)


def confirmed_search(runs: dict, order: list[int], seed_of: dict[int, int], n_search: int, top: int,
                     confirm_seeds: list[int]) -> Decision:
    """n_search configurations once each, then the top K and the base (0) on the same confirmation seeds; the
    best mean of the re-scored scores."""
    searched = order[:n_search]
    spent = sum(runs[c][seed_of[c]]["cpu_s"] for c in searched)
    ranked = sorted(searched, key=lambda c: runs[c][seed_of[c]]["fid1_best"])
    candidates = list(dict.fromkeys([*ranked[:top], 0]))
    means = {}
    for c in candidates:
        spent += sum(runs[c][s]["cpu_s"] for s in confirm_seeds)
        means[c] = statistics.mean(runs[c][s]["fid1_rescored"] for s in confirm_seeds)
    pick = min(means, key=means.get)
    return Decision(pick=pick, reported=means[pick], cpu_s=spent)


def replay(table: list[dict], replays: int, n_search: int, top: int, m: int, seed: int = 0) -> dict[str, dict]:
    """Regret, bias and within-5% of the two ways to decide, over `replays` draws at equal CPU-seconds."""
    runs: dict[int, dict[int, dict]] = {}
    for r in table:
        runs.setdefault(r["config"], {})[r["seed"]] = r
    seeds = sorted(set.intersection(*(set(v) for v in runs.values())))
    configs = sorted(runs)
    truth = {c: statistics.mean(runs[c][s]["fid1_rescored"] for s in seeds) for c in configs}
    best_true = min(truth.values())
    rng = np.random.default_rng(seed)
    out = {"plain search": [], "search + confirmation": []}
    for _ in range(replays):
        order = [int(c) for c in rng.permutation(configs)]
        seed_of = {c: int(rng.choice(seeds)) for c in configs}
        others = [s for s in seeds if s != seed_of.get(0)]
        confirm_seeds = [int(s) for s in rng.choice(others, size=m, replace=False)]
        conf = confirmed_search(runs, order, seed_of, n_search, top, confirm_seeds)
        plain = plain_search(runs, order, seed_of, budget=conf.cpu_s)
        for name, d in (("plain search", plain), ("search + confirmation", conf)):
            out[name].append((truth[d.pick] - best_true, d.reported - truth[d.pick],
                              truth[d.pick] <= 1.05 * best_true, d.cpu_s))
    return {name: _summary(rows) for name, rows in out.items()}


def _summary(rows) -> dict:
    regret, bias, within, cpu = (np.array(col, dtype=float) for col in zip(*rows))
    return {"regret": regret.mean(), "regret_sd": regret.std(ddof=1), "bias": bias.mean(),
            "bias_sd": bias.std(ddof=1), "within5": within.mean(), "cpu_s": cpu.mean(), "n": len(rows)}


def print_replay(result: dict[str, dict], table: list[dict], args) -> None:
    seeds = len({r["seed"] for r in table})
    print(f"decision quality on {len({r['config'] for r in table})} configurations x {seeds} seeds "
          f"({args.table}); {args.replays} replays; confirmation: top {args.top} + base on {args.confirm_seeds} "
          f"seeds after {args.search} searched configurations")
    print("| method | regret (mean +- sd) | bias of the reported number | pick within 5% of best | CPU-s |")
    print("| --- | --- | --- | --- | --- |")
    for name, s in result.items():
        print(f"| {name} | {s['regret']:.2f} +- {s['regret_sd']:.2f} | {s['bias']:+.2f} +- {s['bias_sd']:.2f} | "
              f"{100 * s['within5']:.0f}% | {s['cpu_s']:.0f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--configs", type=int, default=16)
    b.add_argument("--seeds", type=int, default=6)
    b.add_argument("--steps", type=int, default=200)
    b.add_argument("--eval-every", type=int, default=50)
    b.add_argument("--eval-samples", type=int, default=500)
    b.add_argument("--out", default=str(DEFAULT_TABLE))
    r = sub.add_parser("replay")
    r.add_argument("--table", default=str(DEFAULT_TABLE))
    r.add_argument("--replays", type=int, default=2000)
    r.add_argument("--search", type=int, default=6)
    r.add_argument("--top", type=int, default=2)
    r.add_argument("--confirm-seeds", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.command == "build":
        build(args)
        return
    table = read_table(Path(args.table))
    print_replay(replay(table, args.replays, args.search, args.top, args.confirm_seeds), table, args)


if __name__ == "__main__":
    main()
