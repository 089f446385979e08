"""Which value the search learns from: a trial that got worse late is told (Optuna) and compared (ASHA) by its best
score so far, the one `afsweep best` and the registry pick it by. Real Ray Tune, real Optuna (sqlite study), the
sweep's own searcher and scheduler; the trials are toy function trainables that report as the worker does."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from orchestrator.spec import parse_spec
from orchestrator.spec.objectives import new_best, told_key, update_best

# each trial's fid1 at steps 10, 20, 30 (fid2 the same): the first is best at step 10 and then diverges
CURVES = {0.001: [10.0, 100.0, 120.0], 0.002: [30.0, 50.0, 60.0],
          # the second improves at the step where ASHA stops it (30 -> 25 at step 20)
          0.004: [10.0, 10.0, 10.0], 0.005: [30.0, 25.0, 20.0],
          # the base setting (search.include_base): worse than both at the rung, yet it must run to its end
          "base": [40.0, 50.0, 45.0]}

SPEC = {
    "name": "told",
    "base": {"overrides": {"total_steps": 30}},
    "search": {
        "num_trials": 2, "max_concurrent": 1, "seed": 0,
        "space": {"optim.lr": {"type": "choice", "values": [0.001, 0.002]}},
        "points_to_evaluate": [{"optim.lr": 0.001}, {"optim.lr": 0.002}],
        "include_base": False,
        # one rung, at step 20: the diverged first trial sits there with fid1 100 but fid1_best 10
        "early_stopping": {"scheduler": "asha", "grace_period": 20, "reduction_factor": 2},
    },
}


def toy_trial(config):
    """Reports like the worker's evaluations: the scores, their running best (objectives.update_best), the step."""
    from ray import tune

    best = new_best()
    curve = "base" if config.get("afsweep_role") == "base" else config["optim.lr"]   # base: the spec's value shown
    for i, fid in enumerate(CURVES[curve], 1):
        scores = {"fid1": fid, "fid2": fid}
        update_best(best, scores, 10 * i)
        tune.report({**scores, "step": 10 * i, "total_steps": 30, "wall_s": float(i)})


def test_update_best_keeps_the_running_best():
    best, seen = new_best(), []
    for step, fid in zip((10, 20, 30), CURVES[0.001]):
        scores = {"fid1": fid, "fid2": fid + 1}
        improved = update_best(best, scores, step)
        seen.append((improved, scores["fid1_best"], scores["fid1_best_step"], scores["fid2_best"]))
    assert seen == [(True, 10.0, 10, 11.0), (False, 10.0, 10, 11.0), (False, 10.0, 10, 11.0)]
    assert told_key("fid1") == "fid1_best" and told_key("wall_s") == "wall_s"
    # the best evaluation's standard error travels with it
    best = new_best()
    for step, fid, se in ((10, 50.0, 2.0), (20, 40.0, 3.0), (30, 45.0, 1.0)):
        scores = {"fid1": fid, "fid1_se": se, "fid2": fid, "fid2_se": se}
        update_best(best, scores, step)
    assert (scores["fid1_best"], scores["fid1_best_se"], scores["fid2_best_se"]) == (40.0, 3.0, 3.0)
    assert math.isinf(new_best()["fid2"])


@pytest.fixture
def local_ray():
    import ray

    from orchestrator.platform.ray_adapter import keep_local_cluster_on_loopback

    assert not ray.is_initialized()
    keep_local_cluster_on_loopback()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def _run_sweep(spec, tmp_path, trials: int = 2):
    """The sweep's own searcher and scheduler over the toy trials: (Tune's results, the Optuna study)."""
    from ray import tune

    from orchestrator.sweep.bounds import grace_period, max_total_steps
    from orchestrator.sweep.search import make_scheduler, make_searcher

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tuner = tune.Tuner(
        toy_trial,
        tune_config=tune.TuneConfig(search_alg=make_searcher(spec, "told", storage),
                                    scheduler=make_scheduler(spec, max_total_steps(spec), grace_period(spec)),
                                    num_samples=trials, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="told", verbose=0),
    )
    grid = tuner.fit()
    assert not grid.errors
    return grid, optuna.load_study(study_name="told", storage=storage)


def test_a_trial_that_diverged_late_is_told_and_compared_by_its_best(tmp_path, local_ray):
    grid, study = _run_sweep(parse_spec(SPEC), tmp_path)
    told = {t.params["optim.lr"]: (t.state.name, t.value if t.state.name == "COMPLETE" else None,
                                   set(t.intermediate_values.values())) for t in study.trials}
    # the diverged trial is told 10 (its best, at step 10), not 120 (its last); with the last value it would be 120
    assert told[0.001] == ("COMPLETE", 10.0, {10.0}), told
    # ASHA compared the second trial's best (30) with the first's best (10) at step 20 and stopped it; compared by
    # last values (50 against 100) it would have run to the end. What Optuna holds of it is its best so far too.
    assert told[0.002] == ("PRUNED", None, {30.0}), told
    steps = sorted(r.metrics["step"] for r in grid)
    assert steps == [20, 30], steps


def test_a_trial_stopped_right_after_it_improved_holds_that_value_in_optuna(tmp_path, local_ray):
    """Tune hands the result ASHA stops a trial on to the searcher's on_trial_complete only: the study must hold
    that value (25, what ASHA compared and MLflow logged), not the one of the evaluation before (30)."""
    spec = parse_spec({**SPEC, "search": {**SPEC["search"], "space": {
        "optim.lr": {"type": "choice", "values": [0.004, 0.005]}},
        "points_to_evaluate": [{"optim.lr": 0.004}, {"optim.lr": 0.005}]}})
    grid, study = _run_sweep(spec, tmp_path)
    last = {r.config["optim.lr"]: r.metrics for r in grid}
    assert last[0.005]["step"] == 20 and last[0.005]["fid1_best"] == 25.0   # stopped at the rung, improved there
    stopped = next(t for t in study.trials if t.params["optim.lr"] == 0.005)
    assert stopped.state.name == "PRUNED"
    assert stopped.value == 25.0 and stopped.intermediate_values[stopped.last_step] == 25.0, stopped


def test_the_base_trial_runs_first_to_its_end_and_stays_out_of_the_study(tmp_path, local_ray):
    """search.include_base: the first trial is the base setting (no searched value, role key set); ASHA counts its
    scores but never stops it, although it is the worst at the rung; Optuna's study holds only the searched two."""
    from orchestrator.spec.trial_config import BASE_ROLE, ROLE_KEY

    spec = parse_spec({**SPEC, "search": {**SPEC["search"], "num_trials": 3, "include_base": True}})
    grid, study = _run_sweep(spec, tmp_path, trials=3)
    by_lr = {"base" if r.config.get(ROLE_KEY) == BASE_ROLE else r.config["optim.lr"]: r for r in grid}
    assert set(by_lr) == {"base", 0.001, 0.002}
    assert by_lr["base"].config["optim.lr"] == 0.001   # the base value, shown in Tune's table
    assert by_lr["base"].metrics["step"] == 30 and by_lr["base"].metrics["fid1_best"] == 40.0
    assert by_lr[0.002].metrics["step"] == 20   # a searched trial worse than the rung's cut is still stopped
    assert sorted(t.params["optim.lr"] for t in study.trials) == [0.001, 0.002]
    # Tune numbers trials in the order it created them: toy_trial_<id>_<number>_<searched values>_<date>
    first = min(grid, key=lambda r: int(Path(r.path).name.split("_")[3]))
    assert first.config.get(ROLE_KEY) == BASE_ROLE
