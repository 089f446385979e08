"""Multi-objective best: the Pareto front on hand-made points, and `afsweep best --pareto` over a real MLflow store
(sqlite) of hand-made trial runs: the front, its numbering, --json, --register --pick, and one-line errors."""

from __future__ import annotations

import itertools
import json

import pytest
from click.testing import CliRunner

from orchestrator import tracking
from orchestrator.cli import main
from orchestrator.spec import SpecError, parse_spec
from orchestrator.spec.objectives import parse_objectives
from orchestrator.sweep.pareto import dominates, pareto_front
from tests.support.stores import toy_store


def test_pareto_front_of_hand_made_points():
    pts = [(1, 5), (2, 2), (3, 1), (2, 3), (4, 4), (2, 2), (1, 6)]
    # (2, 3) and (1, 6) are dominated by (2, 2) and (1, 5); (4, 4) by all of the first three; (2, 2) twice: kept
    assert pareto_front(pts, ["min", "min"]) == [0, 1, 2, 5]
    # maximising the second: (1, 6) has the lowest x and the highest y, so it dominates every other point
    assert pareto_front(pts, ["min", "max"]) == [6]
    assert pareto_front([(1, 1), (2, 2), (3, 0)], ["min", "max"]) == [0, 1]
    assert dominates((1, 1), (1, 2), ["min", "min"]) and not dominates((1, 2), (1, 2), ["min", "min"])
    assert dominates((1, 3), (1, 2), ["min", "max"]) and not dominates((1, 3), (2, 1), ["max", "min"])
    three = [(1, 1, 9), (1, 1, 8), (0, 5, 9), (2, 2, 9)]
    assert pareto_front(three, ["min"] * 3) == [1, 2]
    assert pareto_front([], ["min", "min"]) == []


def test_objectives_in_the_spec_and_on_the_command_line():
    spec = parse_spec({"name": "m", "search": {"objectives": {"fid1": "min", "wall_s": "min"}}})
    assert spec.search.early_stopping.scheduler == "none"      # ASHA is off in a multi-objective search
    assert parse_spec({"name": "s"}).search.early_stopping.scheduler == "asha"   # a single objective: as before
    for bad, where in (({"objectives": {"fid1": "min"}}, "search.objectives: name two or more"),
                       ({"objectives": {"wall_s": "min", "cpu_s": "min"}}, "no image-quality score"),
                       ({"objectives": {"fid1": "min", "fid2": "min"}, "early_stopping": {"scheduler": "asha"}},
                        "early_stopping.scheduler: asha compares one metric")):
        with pytest.raises(SpecError, match=where):
            parse_spec({"name": "m", "search": bad}, "m.yaml")
    from orchestrator.sweep.preview import plan_trials

    plan = plan_trials(parse_spec({"name": "m", "search": {
        "num_trials": 3, "objectives": {"fid1": "min", "fid2": "min"},
        "space": {"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}}}))
    assert len(plan.trials) == 3 and plan.rungs == []        # preview plans it with the same sampler, no rungs
    assert parse_objectives("fid1,wall_s:max") == {"fid1": "min", "wall_s": "max"}
    with pytest.raises(ValueError, match="unknown objective 'loss'"):
        parse_objectives("fid1,loss")


def test_a_multi_objective_searcher_tells_optuna_every_objective():
    from orchestrator.sweep.search import make_searcher

    spec = parse_spec({"name": "m", "search": {"objectives": {"fid1": "min", "fid2": "min"},
                                               "include_base": False,   # the first suggestion a search point
                                               "space": {"optim.lr": {"type": "loguniform", "low": 1e-4,
                                                                      "high": 1e-2}}}})
    searcher = make_searcher(spec, "m", None).searcher
    assert searcher.metric == ["fid1_best", "fid2_best"] and searcher.mode == ["min", "min"]
    assert searcher.suggest("a") is not None
    searcher.on_trial_result("a", {"fid1": 50.0, "fid1_best": 40.0, "fid2": 60, "fid2_best": 30.0, "step": 10,
                                   "total_steps": 20})
    searcher.on_trial_complete("a", {"fid1": 50.0, "fid1_best": 40.0, "fid2": 60, "fid2_best": 30.0, "step": 20,
                                     "total_steps": 20})
    (trial,) = searcher._ot_study.trials
    assert trial.state.name == "COMPLETE" and trial.values == [40.0, 30.0]


# --- best --pareto against a store -------------------------------------------------------------------------------

_ids = itertools.count()
SWEEP = "mo-1"
# (fid1_best, wall_s, state, fid1_best_step): the front on (fid1, wall_s) is a, b, c; d is dominated by b; the failed
# and the untrained trial would be on it but are never candidates
TRIALS = {"a": (100.0, 30.0, "completed", 20), "b": (120.0, 20.0, "completed", 20), "c": (150.0, 10.0, "completed", 20),
          "d": (130.0, 25.0, "completed", 20), "failed": (10.0, 1.0, "failed", 20), "untrained": (90.0, 5.0,
                                                                                                 "completed", 0)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto")
    client, uri, exp, ckpt = toy_store(root)
    parent = tracking.start_sweep_run(client, exp, SWEEP, "name: mo\n", {"objectives": "fid1:min,wall_s:min",
                                                                         "registered_model": "afsweep-pareto"})
    single = tracking.start_sweep_run(client, exp, "so-1", "name: so\n", {"objectives": "fid1:min"})
    runs = {}
    for name, (fid1, wall, state, step) in TRIALS.items():
        run_id = tracking.get_or_create_trial_run(client, exp, parent, SWEEP, f"t{next(_ids)}", name,
                                                  {"optim.lr": 0.001 * (1 + len(runs)), "swept": "optim.lr"})
        client.log_metric(run_id, "fid1_best", fid1, step=step)
        client.log_metric(run_id, "fid1_best_step", step, step=step)
        client.log_metric(run_id, "wall_s", wall, step=step)
        client.log_artifact(run_id, str(ckpt), "checkpoint")
        tracking.close_trial_run(client, run_id, state)
        runs[name] = run_id
    # the newest sweep is single-objective: --pareto on it says so
    assert single
    return root, client, runs


def _best(root, *args):
    return CliRunner().invoke(main, ["best", "--run-dir", str(root), *args])


def test_best_pareto_json_lists_the_front_in_order(store):
    root, client, runs = store
    res = _best(root, "--sweep", SWEEP, "--pareto", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["run_id"] for r in rows] == [runs["a"], runs["b"], runs["c"]]   # by fid1, the first objective
    assert [r["pick"] for r in rows] == [1, 2, 3]
    assert rows[1]["objectives"] == {"fid1": 120.0, "wall_s": 20.0}
    assert rows[1]["params"] == {"optim.lr": 0.002}
    text = _best(root, "--sweep", SWEEP, "--pareto")
    assert text.exit_code == 0 and "Pareto front on fid1 (min), wall_s (min): 3 of 4 trials" in text.output
    # other objectives from the command line: with wall_s maximised, a (the lowest fid1, the longest) dominates all
    res = _best(root, "--sweep", SWEEP, "--pareto", "--objectives", "fid1,wall_s:max", "--json")
    assert [r["run_id"] for r in json.loads(res.stdout)] == [runs["a"]]


def test_best_pareto_registers_the_picked_point(store):
    root, client, runs = store
    res = _best(root, "--sweep", SWEEP, "--pareto", "--register", "pareto-cheap", "--pick", "3", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[2]["model_uri"] == "models:/afsweep-pareto@pareto-cheap"
    assert client.get_model_version_by_alias("afsweep-pareto", "pareto-cheap").run_id == runs["c"]


@pytest.mark.parametrize("args, says", [
    (("--sweep", SWEEP, "--pareto", "--register", "x"), "choose a point with --pick N (1..3)"),
    (("--sweep", SWEEP, "--pareto", "--register", "x", "--pick", "4"), "--pick 4: the front has points 1..3"),
    (("--sweep", SWEEP, "--pareto", "--pick", "1"), "--pick chooses the point to --register"),
    (("--sweep", SWEEP, "--pick", "1"), "--pick goes with --pareto"),
    (("--sweep", SWEEP, "--pareto", "--objectives", "fid1,loss"), "--objectives: unknown objective 'loss'"),
    (("--sweep", "so-1", "--pareto"), "sweep 'so-1' searched one objective (fid1)"),
    (("--sweep", "all", "--pareto"), "name the objectives with --objectives"),
    (("--sweep", "nope", "--pareto"), "no sweep named 'nope'"),
])
def test_best_pareto_bad_input_is_one_line_exit_2(store, args, says):
    root, _, _ = store
    res = _best(root, *args)
    assert res.exit_code == 2, res.output
    assert says in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_the_parent_run_gets_the_plot_and_the_front(store):
    from orchestrator.sweep.pareto import log_front

    root, client, runs = store
    exp = client.get_experiment_by_name("afsweep").experiment_id
    parent = tracking.find_sweep_run(client, exp, SWEEP)
    front = log_front(client, parent, exp, SWEEP, {"fid1": "min", "wall_s": "min"})
    assert [p.run_id for p in front] == [runs["a"], runs["b"], runs["c"]]
    names = {a.path for a in client.list_artifacts(parent)}
    assert {"pareto.png", "pareto.json"} <= names
    png = client.download_artifacts(parent, "pareto.png", str(root))
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert client.get_run(parent).data.metrics["pareto_size"] == 3
