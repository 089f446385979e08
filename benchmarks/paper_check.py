"""The paper's claim at toy scale: alpha-Flow against MeanFlow (with and without Improved MeanFlow's beta weight)
on Fashion-MNIST, at equal steps, several seeds, 1- and 2-NFE FID of the EMA weights.

    .venv/bin/python benchmarks/paper_check.py [--steps 900] [--batch-size 64] [--seeds 3] [--eval-n 2000]
        [--configs alphaflow,meanflow,meanflow-beta] [--data-dir /tmp/afsweep-paper-check-data]

Configurations (all on the tiny-cpu preset, everything else equal):
- alphaflow       the preset's sigmoid curriculum alpha 1 -> 0 (k_s 0.1, k_e 0.5 of training)
- meanflow        alpha = 0 throughout (the JVP target from step 0)
- meanflow-beta   MeanFlow + Improved MeanFlow's progressive beta weight on r < t rows (beta_k = 1)
- alphaflow-beta  the curriculum + the beta weight (optional)
Each run trains in this process (one rank, 2 threads), then scores fid1 / fid2 with the domain CNN
(fashion-mnist-cnn) against the manifest's test-split reference, on the same noise and labels for every run
(alphaflow.evaluation.evaluate_generator). Runs are interleaved (seed outer, config inner) so that load from other
processes falls on all configurations alike. std is the sample standard deviation over seeds (ddof = 1).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

CONFIGS: dict[str, dict] = {
    "alphaflow": {},
    "meanflow": {"alpha.kind": "constant", "alpha.start": 0.0, "alpha.end": 0.0},
    "meanflow-beta": {"alpha.kind": "constant", "alpha.start": 0.0, "alpha.end": 0.0,
                      "loss.beta": True, "loss.beta_k": 1.0},
    "alphaflow-beta": {"loss.beta": True, "loss.beta_k": 1.0},
}
DEFAULT_CONFIGS = "alphaflow,meanflow,meanflow-beta"
# 900 steps at batch 64: 9 runs of about 2 min each on this 2-core CPU (measured at 2 threads: 0.127 s/step for
# the alpha-Flow curriculum, 0.15 s/step for MeanFlow (JVP throughout), 4.6 s per evaluation at N = 2000), ~20 min.
DEFAULT_STEPS = 900


@dataclass
class RunResult:
    config: str
    seed: int
    fid1: float
    fid2: float
    train_s: float
    eval_s: float
    final_loss_unweighted: float   # mean over the last 10% of steps: did the regression target settle?
    max_grad_norm: float           # before clipping, over the whole run
    error: str = ""                # a non-finite loss ends the run; FIDs are then NaN
    extra: dict = field(default_factory=dict)


def ensure_data(data_dir: str) -> str:
    """The Fashion-MNIST manifest under data_dir, prepared once and reused afterwards."""
    from alphaflow.data import prepare_builtin, read_manifest

    manifest = Path(data_dir) / "manifest.parquet"
    if manifest.is_file():
        read_manifest(str(manifest))   # a broken cache fails here with a one-line DataError naming the file
        return str(manifest)
    return prepare_builtin("fashion-mnist", data_dir)


def run_one(name: str, seed: int, args, manifest_url: str, shared) -> RunResult:
    """Train one configuration from scratch in this process, then score its EMA weights."""
    from alphaflow.config import apply_overrides
    from alphaflow.data import make_train_loader
    from alphaflow.evaluation import evaluate_generator
    from alphaflow.presets import get_preset
    from alphaflow.train_state import NonFiniteLossError, TrainState

    m, ext, ref, decode = shared
    cfg = apply_overrides(get_preset("tiny-cpu"), {
        **CONFIGS[name], "seed": seed, "total_steps": args.steps, "batch_size": args.batch_size,
        "diagnostics_every": 0})
    train_state = TrainState(cfg, image_shape=tuple(m.image_shape), num_classes=m.num_classes)
    batches = iter(make_train_loader(manifest_url, batch_size=cfg.batch_size, rank=0, world_size=1, seed=seed))

    t0 = time.perf_counter()
    losses, max_gn, error = [], 0.0, ""
    try:
        while train_state.step < cfg.total_steps:
            x, y = next(batches)
            logs = train_state.train_step(x, y)
            losses.append(logs.get("loss_unweighted", logs["loss"]))
            max_gn = max(max_gn, logs["grad_norm"])
    except NonFiniteLossError as e:
        error = str(e)
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    fid1 = fid2 = math.nan
    if not error:
        res = evaluate_generator(lambda z, y, nfe: train_state.sample(z, y, nfe=nfe),
                                 decode, tuple(m.image_shape), m.num_classes,
                                 ext, ref, n=args.eval_n)
        fid1, fid2 = res.metrics["fid1"], res.metrics["fid2"]
    eval_s = time.perf_counter() - t0
    tail = losses[-max(1, len(losses) // 10):]
    return RunResult(name, seed, fid1, fid2, train_s, eval_s, statistics.fmean(tail) if tail else math.nan,
                     max_gn, error)


def _mean_std(values: list[float]) -> tuple[float, float]:
    ok = [v for v in values if math.isfinite(v)]
    if not ok:
        return math.nan, math.nan
    return statistics.fmean(ok), statistics.stdev(ok) if len(ok) > 1 else 0.0


def format_table(results: list[RunResult], configs: list[str], seeds: list[int]) -> list[str]:
    seed_cols = " | ".join(f"fid1 s{s}" for s in seeds)
    lines = [f"| config | {seed_cols} | fid1 mean +- std | fid2 mean +- std | final loss | max grad norm "
             f"| train s/run | wall s (all seeds) |",
             "|" + "---|" * (6 + len(seeds) + 1)]
    for c in configs:
        rs = {r.seed: r for r in results if r.config == c}
        f1 = [rs[s].fid1 for s in seeds]
        m1, s1 = _mean_std(f1)
        m2, s2 = _mean_std([rs[s].fid2 for s in seeds])
        loss = statistics.fmean(rs[s].final_loss_unweighted for s in seeds)
        gn = max(rs[s].max_grad_norm for s in seeds)
        train = statistics.fmean(rs[s].train_s for s in seeds)
        wall = sum(rs[s].train_s + rs[s].eval_s for s in seeds)
        lines.append(f"| {c} | " + " | ".join(f"{v:.2f}" for v in f1)
                     + f" | {m1:.2f} +- {s1:.2f} | {m2:.2f} +- {s2:.2f} | {loss:.4f} | {gn:.2f} | {train:.1f} "
                     f"| {wall:.1f} |")
    return lines


def summary(results: list[RunResult], configs: list[str]) -> str:
    """Which configuration has the lowest mean fid1 and fid2, and by how much relative to the seed spread."""
    parts = []
    for metric in ("fid1", "fid2"):
        stats = {c: _mean_std([getattr(r, metric) for r in results if r.config == c]) for c in configs}
        ranked = sorted((c for c in configs if math.isfinite(stats[c][0])), key=lambda c: stats[c][0])
        if not ranked:
            parts.append(f"{metric}: no finite result")
            continue
        best = ranked[0]
        if len(ranked) > 1:
            second = ranked[1]
            gap = stats[second][0] - stats[best][0]
            spread = math.hypot(stats[best][1], stats[second][1])
            parts.append(f"{metric}: best {best} ({stats[best][0]:.2f}), next {second} ({stats[second][0]:.2f}), "
                         f"gap {gap:.2f} vs seed spread {spread:.2f}")
        else:
            parts.append(f"{metric}: best {best} ({stats[best][0]:.2f})")
    return "summary (lowest mean FID): " + "; ".join(parts)


def main(argv: list[str] | None = None) -> list[RunResult]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    ap.add_argument("--eval-n", type=int, default=2000)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma list of: {', '.join(CONFIGS)}")
    ap.add_argument("--data-dir", default="/tmp/afsweep-paper-check-data")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        ap.error(f"--configs: unknown {', '.join(unknown) or '(empty)'}; known: {', '.join(CONFIGS)}")
    if args.steps < 1 or args.seeds < 1 or args.eval_n < 2 or args.batch_size < 1:
        ap.error("--steps, --seeds and --batch-size must be >= 1, --eval-n >= 2")

    from alphaflow.data import read_manifest
    from alphaflow.evaluation import LatentDecoder
    from alphaflow.metrics import ReferenceStats, load_extractor

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    manifest_url = ensure_data(args.data_dir)
    m = read_manifest(manifest_url)
    ext, ref = load_extractor("fashion-mnist-cnn"), ReferenceStats.load(m.fid_reference)
    shared = (m, ext, ref, LatentDecoder.of(m))
    seeds = list(range(args.seeds))
    print(f"data ready in {time.perf_counter() - t_start:.1f} s: {manifest_url}", flush=True)

    results: list[RunResult] = []
    for seed in seeds:
        for c in configs:
            r = run_one(c, seed, args, manifest_url, shared)
            results.append(r)
            note = f"  FAILED: {r.error}" if r.error else ""
            print(f"  {c:<15} seed {seed}: fid1 {r.fid1:.2f} fid2 {r.fid2:.2f}  train {r.train_s:.1f} s "
                  f"eval {r.eval_s:.1f} s  final loss {r.final_loss_unweighted:.4f}{note}", flush=True)

    print(f"\nFashion-MNIST, tiny-cpu DiT, {args.steps} steps x batch {args.batch_size}, {args.seeds} seeds, "
          f"FID-{args.eval_n} (fashion-mnist-cnn features, test-split reference), EMA weights, "
          f"{args.threads} threads")
    for line in format_table(results, configs, seeds):
        print(line)
    print(summary(results, configs))
    print(f"total wall {time.perf_counter() - t_start:.1f} s")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
