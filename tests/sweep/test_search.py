"""The Optuna search space built from a spec: distributions, conditional parameters, pruned trials."""

from __future__ import annotations

import optuna

from orchestrator.spec import parse_spec
from orchestrator.sweep.search import PrunedAwareOptunaSearch, define_by_run

SPACE = {
    "name": "s",
    "search": {
        "space": {
            "loss.beta": {"type": "choice", "values": [True, False]},
            "loss.beta_k": {"type": "uniform", "low": 0.5, "high": 2.0, "when": {"loss.beta": True}},
            "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
            "model.size": {"type": "fixed", "value": "micro"},
            "total_steps": {"type": "int", "low": 10, "high": 20, "step": 5},
        }
    },
}


def test_define_by_run_honours_conditions_and_ranges():
    spec = parse_spec(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_beta = set()
    for _ in range(30):
        trial = study.ask()
        constants = define_by_run(spec)(trial)
        p = {**trial.params, **constants}
        seen_beta.add(p["loss.beta"])
        assert ("loss.beta_k" in p) == p["loss.beta"]
        if p["loss.beta"]:
            assert 0.5 <= p["loss.beta_k"] <= 2.0
        assert 1e-4 <= p["optim.lr"] <= 1e-2
        assert p["total_steps"] in (10, 15, 20)
        assert constants == {"model.size": "micro"}
        study.tell(trial, 1.0)
    assert seen_beta == {True, False}


def test_stopped_trial_is_pruned_in_optuna():
    spec = parse_spec(SPACE)
    search = PrunedAwareOptunaSearch(space=define_by_run(spec), metric="fid1", mode="min",
                                     sampler=optuna.samplers.TPESampler(seed=0), study_name="t")
    for tid in ("a", "b"):
        assert search.suggest(tid) is not None
    search.on_trial_result("a", {"fid1": 10.0, "step": 5, "total_steps": 20, "training_iteration": 1})
    search.on_trial_complete("a", {"fid1": 10.0, "step": 5, "total_steps": 20})
    search.on_trial_complete("b", {"fid1": 3.0, "step": 20, "total_steps": 20})
    states = sorted(t.state.name for t in search._ot_study.trials)
    assert states == ["COMPLETE", "PRUNED"]


def _spec_with(space: dict, overrides: dict | None = None, preset: str = "tiny-cpu"):
    overrides = {"total_steps": 100} if overrides is None else overrides
    return parse_spec({"name": "s", "base": {"preset": preset, "overrides": overrides},
                       "search": {"space": space}})


def test_asha_bounds_cover_every_trial_length_and_transition():
    from orchestrator.sweep.bounds import max_total_steps, transition_end_steps

    # searched length: max_t is the longest trial, and the grace covers its transition (k_e = 0.5 of 400)
    spec = _spec_with({"total_steps": {"type": "int", "low": 100, "high": 400, "step": 100}})
    assert max_total_steps(spec) == 400
    assert transition_end_steps(spec) == 200
    # searched transition end, as fractions and as a choice
    spec = _spec_with({"alpha.k_e": {"type": "choice", "values": [0.3, 0.8]}})
    assert transition_end_steps(spec) == 80
    # a constant alpha has no transition: ASHA may judge from the first step
    spec = _spec_with({"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}},
                      {"total_steps": 100, "alpha.kind": "constant"})
    assert transition_end_steps(spec) == 0


def test_asha_bounds_with_a_searched_preset():
    from orchestrator.sweep.bounds import max_total_steps, transition_end_steps

    spec = _spec_with({"preset": {"type": "choice", "values": ["tiny-cpu", "alphaflow-XL2-cfg"]}}, overrides={})
    assert max_total_steps(spec) == 1_200_000          # XL/2: 1.2M steps
    assert transition_end_steps(spec) == 1_000_000     # its transition ends at 1M


def test_tpe_starts_modelling_early_in_small_sweeps():
    from orchestrator.sweep.search import make_sampler, startup_trials

    small = parse_spec({"name": "s", "search": {"num_trials": 8}})
    assert startup_trials(small) == 2 and make_sampler(small)._n_startup_trials == 2
    assert startup_trials(parse_spec({"name": "s", "search": {"num_trials": 200}})) == 10
    assert startup_trials(parse_spec({"name": "s", "search": {"num_trials": 8, "startup_trials": 5}})) == 5


def test_gp_sampler_searches_the_same_space_rules():
    """`algorithm: optuna-gp` is Optuna's GPSampler over the spec's space: ranges and `when:` conditions hold, and on
    a smooth objective it models the results (its best beats its own random start-up trials)."""
    import math

    from orchestrator.sweep.search import make_sampler

    spec = parse_spec({**SPACE, "search": {**SPACE["search"], "algorithm": "optuna-gp", "num_trials": 16}})
    sampler = make_sampler(spec)
    assert isinstance(sampler, optuna.samplers.GPSampler) and sampler._n_startup_trials == 4
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)
    space = define_by_run(spec)

    def objective(trial):
        constants = space(trial)   # suggests first: trial.params holds the suggestions after it
        p = {**trial.params, **constants}
        assert 1e-4 <= p["optim.lr"] <= 1e-2 and p["total_steps"] in (10, 15, 20) and p["model.size"] == "micro"
        assert ("loss.beta_k" in p) == p["loss.beta"]
        return (math.log10(p["optim.lr"]) + 2.5) ** 2

    study.optimize(objective, n_trials=16)
    values = [t.value for t in study.trials]
    assert min(values[4:]) < min(values[:4]) and min(values) < 0.05


def test_base_first_searcher_hands_out_the_base_once_even_after_a_restore(tmp_path):
    from orchestrator.spec.trial_config import BASE_ROLE, ROLE_KEY

    spec = parse_spec(SPACE)
    assert spec.search.include_base   # the default for a search
    search = PrunedAwareOptunaSearch(space=define_by_run(spec), metric="fid1", mode="min",
                                     sampler=optuna.samplers.TPESampler(seed=0), study_name="t", base_first=True)
    assert search.suggest("base") == {ROLE_KEY: BASE_ROLE}
    search.on_trial_result("base", {"fid1": 9.0, "step": 5, "total_steps": 20, "training_iteration": 1})
    search.on_trial_complete("base", {"fid1": 9.0, "step": 20, "total_steps": 20})
    searched = search.suggest("a")
    assert ROLE_KEY not in searched and searched["model.size"] == "micro"
    search.save(str(tmp_path / "searcher.pkl"))
    restored = PrunedAwareOptunaSearch(space=define_by_run(spec), metric="fid1", mode="min",
                                       sampler=optuna.samplers.TPESampler(seed=0), study_name="t", base_first=True)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert ROLE_KEY not in restored.suggest("b")   # `afsweep resume` does not run the base twice
    assert len(search._ot_study.trials) == 1       # the base is no point of the study


def test_a_grid_runs_no_base_trial():
    from orchestrator.spec.load import SpecError

    grid = {"name": "g", "search": {"algorithm": "grid", "space": {
        "optim.lr": {"type": "choice", "values": [1e-3, 2e-3]}}}}
    assert parse_spec(grid).search.include_base is False
    try:
        parse_spec({**grid, "search": {**grid["search"], "include_base": True}})
    except SpecError as e:
        assert "include_base" in str(e) and "add the base values to the space's choices" in str(e)
    else:
        raise AssertionError("a grid with include_base: true was accepted")
