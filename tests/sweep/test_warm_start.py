"""Warm start: a new sweep's Optuna study begins with an earlier sweep's trials read from a real MLflow store
(sqlite), through the sweep's own searcher (real OptunaSearch, real Optuna study in sqlite)."""

from __future__ import annotations

import time

import optuna
import pytest

from orchestrator import tracking
from orchestrator.spec import parse_spec
from orchestrator.sweep.search import make_searcher
from orchestrator.sweep.warm_start import WarmStartError, read_warm_start
from tests.support.stores import mlflow_store

# the earlier sweep's trials: (state, recorded params, fid1_best, wall_s)
EARLIER = {
    "t1": ("completed", {"optim.lr": 0.002, "alpha.k_e": 0.4, "loss.beta": True, "loss.beta_k": 1.5}, 50.0, 10.0),
    "t2": ("completed", {"optim.lr": 0.00123457, "alpha.k_e": 0.45, "loss.beta": False, "loss.beta_k": 1.0}, 40.0,
           12.0),
    "t3": ("pruned", {"optim.lr": 0.003, "alpha.k_e": 0.35, "loss.beta": False, "loss.beta_k": 1.0}, 70.0, 5.0),
    # the best score, but outside the new learning-rate range: left out, not clipped
    "t4": ("completed", {"optim.lr": 0.02, "alpha.k_e": 0.4, "loss.beta": False, "loss.beta_k": 1.0}, 10.0, 9.0),
    "t5": ("failed", {"optim.lr": 0.001, "alpha.k_e": 0.4, "loss.beta": False, "loss.beta_k": 1.0}, 5.0, 3.0),
    "t6": ("completed", {"optim.lr": 0.005, "alpha.k_e": 0.3, "loss.beta": False, "loss.beta_k": 1.0}, 45.0, 8.0),
}
SPACE = {
    "optim.lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
    "alpha.k_e": {"type": "uniform", "low": 0.3, "high": 0.5},
    "loss.beta": {"type": "choice", "values": [True, False]},
    "loss.beta_k": {"type": "uniform", "low": 0.5, "high": 2.0, "when": {"loss.beta": True}},
}


def _sweep(client, exp, name: str, trials: dict) -> None:
    parent = tracking.start_sweep_run(client, exp, name, f"name: {name}\n", {"objectives": "fid1:min"})
    for trial, (state, params, fid1, wall) in trials.items():
        run_id = tracking.get_or_create_trial_run(client, exp, parent, name, f"{name}-{trial}", trial,
                                                  {**params, "swept": ",".join(params)})
        client.log_metric(run_id, "fid1_best", fid1, step=30)
        client.log_metric(run_id, "fid1_best_step", 30, step=30)
        client.log_metric(run_id, "wall_s", wall, step=30)
        tracking.close_trial_run(client, run_id, state, step=20 if state == "pruned" else None)
        time.sleep(0.01)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    client, uri, exp = mlflow_store(root)
    _sweep(client, exp, "old-0", {"t0": EARLIER["t1"]})
    _sweep(client, exp, "old-1", EARLIER)   # the newest: what `latest` names
    return root, client, uri


def _spec(**search):
    return parse_spec({"name": "new", "base": {"overrides": {"total_steps": 30}},
                       "search": {"space": SPACE, "num_trials": 4, **search}})


def test_a_warm_started_search_runs_the_earlier_best_first_with_its_history(store, tmp_path):
    root, client, uri = store
    # no base trial: the first suggestions are the earlier sweep's best (with one, they come right after it)
    spec = _spec(warm_start="latest", warm_start_top=2, include_base=False)
    warm = read_warm_start(client, spec, uri)
    assert warm.sweep == "old-1"
    # t1, t2, t3 (pruned), t6; t4 outside the space and the failed t5 left out
    assert [t.state.name for t in warm.history] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE"]
    assert len(warm.left_out) == 2 and "t4: optim.lr=0.02 is outside [0.0001, 0.01]" in warm.left_out
    line = warm.line()
    assert "4 of its trials in the study (3 complete, 1 pruned), its best 2 run first" in line
    assert "2 left out (not clipped): t4: optim.lr=0.02 is outside" in line and "\n" not in line

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = make_searcher(spec, "new-1", storage, warm=warm).searcher
    first, second, third = (searcher.suggest(t) for t in ("a", "b", "c"))
    assert first == {"optim.lr": 0.00123457, "alpha.k_e": 0.45, "loss.beta": False}    # the earlier best, t2
    assert second == {"optim.lr": 0.005, "alpha.k_e": 0.3, "loss.beta": False}         # then t6
    assert third not in (first, second) and 1e-4 <= third["optim.lr"] <= 1e-2
    study = optuna.load_study(study_name="new-1", storage=storage)
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == 4 and len(study.trials) == 7          # the history, then the three asked
    assert [t.number for t in done] == [0, 1, 2, 3]            # numbered first, in the order they ran
    assert sorted(t.value for t in done if t.state.name == "COMPLETE") == [40.0, 45.0, 50.0]
    t1 = next(t for t in done if t.value == 50.0)
    assert t1.params == {"optim.lr": 0.002, "alpha.k_e": 0.4, "loss.beta": True, "loss.beta_k": 1.5}
    pruned = next(t for t in done if t.state.name == "PRUNED")
    assert pruned.intermediate_values == {20: 70.0}


def test_history_is_told_the_new_sweeps_objectives(store):
    _, client, uri = store
    spec = _spec(warm_start="old-1", objectives={"fid1": "min", "wall_s": "min"})
    warm = read_warm_start(client, spec, uri)
    complete = [t for t in warm.history if t.state.name == "COMPLETE"]
    assert sorted(t.values for t in complete) == [[40.0, 12.0], [45.0, 8.0], [50.0, 10.0]]
    assert warm.points == [{"optim.lr": 0.00123457, "alpha.k_e": 0.45, "loss.beta": False}]   # warm_start_top 1
    searcher = make_searcher(spec, "new-mo", None, warm=warm).searcher
    states = [t.state.name for t in searcher._ot_study.trials]
    assert len(searcher._ot_study.directions) == 2
    assert sorted(states) == ["COMPLETE"] * 3 + ["PRUNED", "WAITING"]    # the history and the enqueued best


def test_a_value_within_the_rounding_of_a_bound_is_on_the_bound(store):
    _, client, uri = store
    space = {**SPACE, "optim.lr": {"type": "loguniform", "low": 1.0e-4, "high": 0.0012345678}}
    spec = parse_spec({"name": "new", "search": {"space": space, "warm_start": "old-1"}})
    warm = read_warm_start(client, spec, uri)
    lrs = sorted(t.params["optim.lr"] for t in warm.history)
    assert lrs == [0.0012345678]          # t2's 0.00123457 is 0.0012345678 rounded to 6 digits; the rest are above


def test_bad_warm_starts_are_one_line_and_exit_2(store):
    from orchestrator.cli.main import exit_code as _exit_code

    _, client, uri = store
    with pytest.raises(WarmStartError) as e:
        read_warm_start(client, _spec(warm_start="nope"), uri)
    assert str(e.value) == (f"search.warm_start: no sweep named 'nope' in experiment 'afsweep' at {uri} "
                            f"(sweeps: old-1, old-0)")
    assert _exit_code(e.value) == 2
    narrow = {"optim.lr": {"type": "loguniform", "low": 0.1, "high": 0.5}}
    spec = parse_spec({"name": "new", "search": {"space": narrow, "warm_start": "old-1"}})
    with pytest.raises(WarmStartError, match=r"sweep old-1: none of its 6 trials fits .*: t1: optim.lr=0.002 is "
                                             r"outside \[0.1, 0.5\]"):
        read_warm_start(client, spec, uri)
    empty = tracking.client_for(f"sqlite:///{store[0] / 'empty.db'}")
    with pytest.raises(WarmStartError, match="latest: experiment 'afsweep' at .* holds no earlier sweep"):
        read_warm_start(empty, _spec(warm_start="latest"), "sqlite:///empty.db")
    assert read_warm_start(client, _spec(), uri) is None     # no warm_start: nothing read
