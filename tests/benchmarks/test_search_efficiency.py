"""benchmarks/search_efficiency.py without a sweep: its specs are the main spec with only the data set, length,
algorithm, scheduler, seed and trial count changed, and its table counts trials and CPU-seconds to the target."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import search_efficiency as se  # noqa: E402

from orchestrator.spec import parse_spec  # noqa: E402

ARGS = argparse.Namespace(dataset="digits", steps=300, eval_every=100, trials=24)


def test_specs_search_the_main_space():
    main = yaml.safe_load(se.MAIN_SPEC.read_text())
    for label, (algorithm, scheduler) in se.SEARCHES.items():
        spec = parse_spec(yaml.safe_load(se.spec_text(label, 2, ARGS)))
        assert spec.search.algorithm == algorithm and spec.search.early_stopping.scheduler == scheduler
        assert spec.search.seed == 2 and spec.search.num_trials == 24 and spec.data.dataset == "digits"
        assert yaml.safe_load(se.spec_text(label, 2, ARGS))["search"]["space"] == main["search"]["space"]
        assert spec.base.overrides == {"total_steps": 300, "model.patch_size": 2}
    warm = parse_spec(yaml.safe_load(se.spec_text("tpe-asha", 100, ARGS, name="w", trials=6, warm_start="s-1")))
    assert (warm.name, warm.search.num_trials, warm.search.warm_start, warm.search.warm_start_top) == ("w", 6, "s-1", 0)


def test_trials_and_cpu_to_target_and_the_table():
    T = se.Trial
    fast = [T(50.0, 10, 300), T(20.0, 10, 300), T(12.0, 5, 200)]     # within 10% of 11 at its third trial
    slow = [T(40.0, 20, 300), T(30.0, 20, 300), T(11.0, 20, 300)]
    assert se.to_target(fast, 12.1) == (3, 25.0) and se.to_target(slow, 12.1) == (3, 60.0)
    assert se.to_target(slow, 5.0) == (None, None)
    lines = se.report({"tpe-asha": [fast, fast], "random": [slow, [T(99.0, 20, 300)]]})
    assert lines[0] == "best fid1 any search found: 11.00; target (within 10%): 12.10"
    tpe = next(ln for ln in lines if ln.startswith("| tpe-asha |"))
    rnd = next(ln for ln in lines if ln.startswith("| random |"))
    assert "| 3.0 +- 0.0 (3, 3) | 25 +- 0 |" in tpe and "| 1.0 +- 0.0 |" in tpe        # one trial stopped early each
    assert "| 12.00 +- 0.00 | 20.0 +- 0.0 |" in tpe                                     # best, then median trial
    assert "| 55.00 +- 62.23 | 64.5 +- 48.8 |" in rnd                                   # medians 30 and 99
    assert "| 3.0 (1 never) (3, never) |" in rnd
    line, medians = se.warm_start_lines(slow, fast[1:], "s-1")
    assert "reached it in 2 trials (15 CPU-s) of 2" in line and "s-1 itself needed 3 trials (60 CPU-s)" in line
    assert medians == "median trial fid1: warm-started 16.0, s-1's first 2 trials 35.0 (best 30.00)"


def test_seed_noise_pools_the_spread_within_configurations():
    import seed_noise as sn

    groups = {("a",): [10.0, 12.0], ("b",): [20.0, 22.0, 24.0], ("c",): [99.0]}   # c: one seed, left out
    pooled, between, n = sn.within_and_between(groups)
    assert n == 2 and abs(pooled - ((2.0 + 2 * 4.0) / 3) ** 0.5) < 1e-9
    assert abs(between - statistics.stdev([11.0, 22.0])) < 1e-9
    assert sn.within_and_between({("a",): [1.0]})[2] == 0
