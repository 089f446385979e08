"""benchmarks/sweep_overhead.py without a sweep: it runs the main spec itself (only the trial count, the length
and ASHA changed), so its figures are the overhead users pay on `afsweep launch sweeps/curriculum.yaml`."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import sweep_overhead as so  # noqa: E402

from orchestrator.spec import parse_spec  # noqa: E402


def test_the_benchmark_runs_the_main_spec_every_trial_to_its_end():
    main = yaml.safe_load(so.MAIN_SPEC.read_text())
    raw = yaml.safe_load(so.spec_text(3, 200))
    spec = parse_spec(raw)
    assert spec.search.num_trials == 3 and spec.search.early_stopping.scheduler == "none"
    assert raw["search"]["space"] == main["search"]["space"] and raw["train"] == main["train"]
    assert raw["data"] == main["data"] and raw["base"]["overrides"]["total_steps"] == 200
    kept = yaml.safe_load(so.spec_text(2, None))
    assert kept["base"]["overrides"] == main["base"]["overrides"]


def test_trial_phases_split_the_run_at_its_first_and_last_metric():
    history = {"fid1": [SimpleNamespace(timestamp=13_000)], "loss": [SimpleNamespace(timestamp=20_000)],
               "wall_s": [SimpleNamespace(timestamp=13_000), SimpleNamespace(timestamp=95_000)]}
    client = SimpleNamespace(get_metric_history=lambda run_id, key: history[key])
    run = SimpleNamespace(info=SimpleNamespace(run_id="r", start_time=1_000, end_time=100_000),
                          data=SimpleNamespace(metrics={"wall_s": 81.5}))
    assert so.trial_phases(client, run) == {"start": 12.0, "loop": 81.5, "close": 5.0, "run": 99.0}
