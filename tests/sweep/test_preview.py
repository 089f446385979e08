"""`afsweep preview` and `validate`: the planned trials come from the sweep's own sampler and seed, the rungs are
Ray ASHA's, the plot is written; nothing is run."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.spec import load_spec, method_config
from orchestrator.sweep.preview import asha_rungs, plan_trials

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("grace, max_t, rf", [(180, 300, 2), (150, 300, 2), (10, 1000, 3), (360, 600, 2)])
def test_rungs_match_ray_asha(grace, max_t, rf):
    from ray.tune.schedulers.async_hyperband import _Bracket

    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    assert asha_rungs(grace, max_t, rf) == sorted(int(m) for m, _ in bracket._rungs)


def test_plan_respects_space_and_conditions():
    spec = load_spec(REPO / "sweeps" / "delta_t.yaml")
    plan = plan_trials(spec)
    assert len(plan.trials) == spec.search.num_trials
    assert plan.base and plan.configs[0] == method_config(spec, {}, trial_number=0)   # trial 0: the base setting
    for params, cfg in zip(plan.trials[1:], plan.configs[1:]):
        assert ("loss.beta_k" in params) == params["loss.beta"]  # conditional parameter
        assert cfg.loss.beta == params["loss.beta"] and -0.8 <= cfg.time.mu <= 0.0
    assert plan.rungs and plan.rungs[0] >= plan.configs[0].alpha.k_e * plan.configs[0].total_steps
    assert plan_trials(spec).trials == plan.trials  # seeded: the same plan every time


def test_preview_cli_prints_plan_cost_and_writes_png(tmp_path):
    png = tmp_path / "plan.png"
    res = CliRunner().invoke(main, ["preview", str(REPO / "sweeps" / "curriculum.yaml"), "--png", str(png)])
    assert res.exit_code == 0, res.output
    assert "4 trials x 2 workers" in res.output and "(the base setting)" in res.output
    assert "ASHA rungs at steps 600" in res.output
    assert "cost estimate: ~" in res.output and "(4000 trial-steps at" in res.output
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_validate_cli(tmp_path):
    res = CliRunner().invoke(main, ["validate", str(REPO / "sweeps" / "cfg.yaml"), "--set", "search.num_trials=3"])
    assert res.exit_code == 0 and "3 trials over 4 parameters" in res.output, res.output


def test_cost_estimate_counts_evaluations_shared_cores_waves_and_start_up(monkeypatch):
    """The estimate the main spec's measured wall time is held against (docs/spec.md): every part of it moves it."""
    import os

    from orchestrator.spec import apply_sets, parse_spec, read_yaml
    from orchestrator.sweep import preview

    raw = read_yaml((REPO / "sweeps" / "curriculum.yaml").read_text())
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(preview, "time_steps", lambda *a, **k: 0.1)      # keep the arithmetic exact here
    monkeypatch.setattr(preview, "time_evaluation", lambda *a, **k: 4.0)

    def wall(*sets: str) -> float:
        spec = parse_spec(apply_sets(raw, list(sets), "curriculum.yaml"))
        return preview.estimate_cost(spec, plan_trials(spec), (1, 28, 28), 10)["wall_s"]

    # 4 trials of 1000 steps, 5 evaluations each, 2 at a time on 2 cores with 2 workers each: x2, in 2 waves
    per_trial = (1000 * 0.1 + 5 * 4.0) * 2 + preview.TRIAL_START_S
    assert wall() == pytest.approx(preview.SWEEP_FIXED_S + 2 * per_trial)
    assert wall("search.max_concurrent=1", "train.workers=1") == pytest.approx(
        preview.SWEEP_FIXED_S + 4 * (1000 * 0.1 + 5 * 4.0 + preview.TRIAL_START_S))
    assert wall("train.eval_every=50") > wall()           # 13 evaluations a trial instead of 5
