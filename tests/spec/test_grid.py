"""`search.algorithm: grid` and the spec's `methods`: the grid's size and its one-line errors, every combination
planned once, each method's overrides in the trial config, a searched seed kept as it is, a lost trial's
combination run again after a resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
PAPER_CHECK = REPO / "sweeps" / "paper_check.yaml"

GRID = """name: g
base: {overrides: {total_steps: 40}}
methods:
  fm: {alpha.kind: constant, alpha.start: 1.0, alpha.end: 1.0}
  mf: {alpha: {kind: constant, start: 0.0, end: 0.0}}
search:
  algorithm: grid
  space:
    method: {type: choice, values: [fm, mf]}
    seed: {type: choice, values: [0, 1, 2]}
    model.size: {type: fixed, value: micro}
"""


def _load(tmp_path, text: str, sets: list[str] | None = None):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return load_spec(p, sets), p


def test_paper_check_spec_is_the_method_by_seed_grid():
    from orchestrator.sweep.preview import plan_trials

    spec = load_spec(PAPER_CHECK)
    assert spec.search.num_trials == 25 and spec.search.early_stopping.scheduler == "none"
    plan = plan_trials(spec)
    pairs = [(t["method"], t["seed"]) for t in plan.trials]
    assert sorted(pairs) == sorted(itertools.product(spec.methods, range(5)))   # each combination once
    for (method, seed), cfg in zip(pairs, plan.configs):
        assert cfg.seed == seed, "a searched seed is the trial's seed: methods pair by it"
        assert cfg.total_steps == spec.base.overrides["total_steps"]
        kind, start = cfg.alpha.kind, cfg.alpha.start
        assert {"flow-matching": (kind, start) == ("constant", 1.0),
                "meanflow": (kind, start, cfg.loss.beta) == ("constant", 0.0, False),
                "alphaflow": kind == "sigmoid" and cfg.loss.objective == "alpha-flow",
                "meanflow-beta": (kind, start, cfg.loss.beta, cfg.loss.beta_k) == ("constant", 0.0, True, 1.0),
                "imf": (cfg.loss.objective, kind, start, cfg.ratio_fm.start) == ("imf", "constant", 0.0, 0.5),
                }[method], (method, cfg)
    assert plan_trials(spec).trials == plan.trials   # seeded order: preview shows what the sweep runs


def test_grid_size_is_derived_and_overridable(tmp_path):
    spec, _ = _load(tmp_path, GRID)
    assert spec.search.num_trials == 6
    spec, _ = _load(tmp_path, GRID, ["search.space.seed.values=[0, 1]", "search.space.method.values=[mf]"])
    assert spec.search.num_trials == 2
    spec, _ = _load(tmp_path, GRID, ["search.num_trials=6"])
    assert spec.search.num_trials == 6


def test_frozen_grid_spec_round_trips(tmp_path):
    import yaml

    spec, _ = _load(tmp_path, GRID)
    again, _ = _load(tmp_path, yaml.safe_dump(spec.model_dump(mode="json")))
    assert again == spec


@pytest.mark.parametrize("sets, where", [
    (["search.space.optim.lr={type: uniform, low: 0.001, high: 0.01}"],
     "search.space.optim.lr: a grid takes `choice` (or `fixed`) values, not `uniform`"),
    (["search.num_trials=5"], "search.num_trials: 5, but the grid has 6 combinations (2 method x 3 seed); "
                              "leave num_trials out or set it to 6"),
    (["search.early_stopping.scheduler=asha"], "search.early_stopping.scheduler: asha stops trials early"),
    (["search.space.seed.values=[0, 1, 0]"], "search.space.seed.values[2]: 0 is listed twice"),
    (["search.space.optim.lr={type: choice, values: [0.001], when: {method: fm}}"],
     "search.space.optim.lr.when: a grid runs every combination"),
    (["search.points_to_evaluate=[{method: fm, seed: 0}]"], "search.points_to_evaluate: a grid runs its own"),
    (["search.warm_start=latest"], "search.warm_start: a grid runs every combination"),
])
def test_bad_grid_is_one_line_naming_the_key(tmp_path, sets, where):
    with pytest.raises(SpecError) as e:
        _load(tmp_path, GRID, sets)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "spec.yaml") + ": ") and where in msg, msg


@pytest.mark.parametrize("sets, where", [
    (["methods.mf.loss.objectiv=imf"], "methods.mf: unknown key 'loss.objectiv'"),
    (["methods.fm.alpha.k_s=0.9"], "methods.fm: alpha: k_e (0.5) must not be before k_s (0.9)"),
    (["methods.fm.preset=meanflow-B2"], "methods.fm.preset: a method sets method keys"),
    (["search.space.alpha.start={type: choice, values: [0.0]}"], "methods.fm.alpha.start: also searched"),
    (["search.space.method.values=[fm, nope]", "search.num_trials=6"],
     "search.space.method.values[1]: unknown method 'nope'; the spec's methods: fm, mf"),
    (["search.space.method={type: uniform, low: 0, high: 1}", "search.algorithm=random"],
     "search.space.method: must be a choice or fixed list of method names"),
])
def test_bad_method_is_one_line_naming_it(tmp_path, sets, where):
    with pytest.raises(SpecError) as e:
        _load(tmp_path, GRID, sets)
    msg = str(e.value)
    assert "\n" not in msg and where in msg, msg


def test_validate_builds_every_method(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text(GRID.replace("mf: {alpha:", "broken: {loss.reduce: median}\n  mf: {alpha:"))
    res = CliRunner().invoke(main, ["validate", str(p)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{p}: methods.broken: " in lines[0] and "loss.reduce" in lines[0], lines


def test_method_config_applies_the_chosen_method_then_the_searched_keys():
    from orchestrator.spec.trial_config import build_trial_config, method_config

    spec = parse_spec({"name": "m", "base": {"overrides": {"total_steps": 50, "loss.beta": True}},
                       "methods": {"mf": {"alpha.kind": "constant", "alpha.start": 0.0, "alpha.end": 0.0}},
                       "search": {"space": {"method": {"type": "choice", "values": ["mf"]},
                                            "optim.lr": {"type": "choice", "values": [0.002]}}}})
    cfg = method_config(spec, {"method": "mf", "optim.lr": 0.002}, trial_number=3)
    assert (cfg.alpha.kind, cfg.alpha.start, cfg.loss.beta, cfg.optim.lr) == ("constant", 0.0, True, 0.002)
    assert cfg.seed == 3, "an unsearched seed still differs per trial"
    assert method_config(spec, {"method": "mf", "seed": 7}, trial_number=3).seed == 7
    trial = build_trial_config(spec, {"method": "mf"}, trial_number=1)
    assert trial.method_name == "mf" and trial.searched == {"method": "mf"}
    assert build_trial_config(spec, {}, trial_number=1).method_name is None


def test_seed_is_searchable_with_tpe_too(tmp_path):
    from orchestrator.sweep.preview import plan_trials

    spec, _ = _load(tmp_path, "name: s\nbase: {overrides: {total_steps: 20}}\nsearch:\n  num_trials: 4\n"
                              "  space: {seed: {type: choice, values: [11, 12]}}\n")
    plan = plan_trials(spec)
    searched = plan.configs[1:], plan.trials[1:]   # trial 0 is the base setting, its seed the preset's
    assert [c.seed for c in searched[0]] == [t["seed"] for t in searched[1]]
    assert {c.seed for c in searched[0]} <= {11, 12}


def test_a_lost_trials_combination_runs_after_resume(tmp_path):
    """The driver died after handing a combination to a trial that its last snapshot does not know: the restored
    searcher queues that combination again, and the sweep's trials still cover the grid exactly once."""
    from orchestrator.sweep.search import PrunedAwareOptunaSearch, define_by_run, make_sampler

    spec, _ = _load(tmp_path, GRID)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def searcher():
        return PrunedAwareOptunaSearch(space=define_by_run(spec), metric="fid1_best", mode="min",
                                       sampler=make_sampler(spec), study_name="grid",
                                       storage=optuna.storages.RDBStorage(storage))

    before = searcher()
    ran = [before.suggest(tid) for tid in ("t0", "t1")]
    before.on_trial_complete("t0", {"fid1_best": 1.0, "step": 40, "total_steps": 40})
    snapshot = tmp_path / "searcher.pkl"
    before.save(str(snapshot))
    lost = before.suggest("t2")             # started after the snapshot, then the driver died
    after = searcher()
    after.restore(str(snapshot))
    ran += [after.suggest(f"r{i}") for i in range(spec.search.num_trials - 2)]   # what Tune still starts
    combos = sorted((p["method"], p["seed"]) for p in ran)
    assert combos == sorted(itertools.product(["fm", "mf"], [0, 1, 2])), combos
    assert (lost["method"], lost["seed"]) in combos
    states = [t.state.name for t in after._ot_study.trials]
    assert states.count("FAIL") == 1


def test_preview_times_a_method_bound_to_one_stage():
    """preview times steps at alpha = 1 and 0; iMF accepts only alpha = 0 and is timed there (it failed before)."""
    from orchestrator.spec.trial_config import method_config
    from orchestrator.sweep.preview import time_steps

    spec = load_spec(PAPER_CHECK, ["base.overrides.model.size=micro"])
    assert time_steps(method_config(spec, {"method": "imf", "seed": 0}), (1, 28, 28), 10, 4, steps=1) > 0
