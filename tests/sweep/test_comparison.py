"""The best's gain over the base setting, by hand."""

from __future__ import annotations

import pytest

from orchestrator.sweep.comparison import gain_over_base


def test_gain_and_its_evaluation_error_by_hand():
    g = gain_over_base("fid1_best", best=100.0, best_se=3.0, base=120.0, base_se=4.0)
    assert g.value == 20.0 and g.se == pytest.approx(5.0)          # sqrt(3^2 + 4^2)
    line = g.line()
    assert "20.000 +- 9.800 (95%, evaluation noise only) better than the base setting" in line   # 1.96 * 5
    assert "seed's noise is not in this interval" in line
    worse = gain_over_base("fid1_best", best=130.0, best_se=None, base=120.0, base_se=4.0)
    assert worse.value == -10.0 and worse.se is None and "10.000 worse" in worse.line()
    # a higher-is-better metric: best - base
    assert gain_over_base("acc", best=0.9, best_se=0.01, base=0.8, base_se=0.01, mode="max").value == pytest.approx(0.1)
    same = gain_over_base("fid1_best", best=120.0, best_se=4.0, base=120.0, base_se=4.0, same_trial=True)
    assert same.value == 0.0 and "the base setting is the best trial" in same.line()
    tie = gain_over_base("fid1_best", best=120.0, best_se=4.0, base=120.0, base_se=3.0)   # another trial, equal
    assert "0.000 +- 9.800" in tie.line()


def test_mean_interval_and_paired_gain_by_hand():
    from orchestrator.sweep.comparison import mean_interval, paired_gain

    # values 10, 12, 14: mean 12, s = 2, t(0.975, 2) = 4.302653: half = 4.302653 * 2 / sqrt(3) = 4.968275
    iv = mean_interval([10.0, 12.0, 14.0])
    assert (iv.mean, iv.n) == (12.0, 3) and iv.half == pytest.approx(4.968275, abs=1e-6)
    assert iv.low == pytest.approx(12 - 4.968275, abs=1e-6) and "12.00 +- 4.97 (95%, n=3)" == iv.text()
    with pytest.raises(ValueError):
        mean_interval([1.0])
    # paired by seed: base 20, 30, 40 against 15, 26, 33 -> differences 5, 4, 7 (seed 9 unpaired, left out)
    g = paired_gain({1: 20.0, 2: 30.0, 3: 40.0}, {1: 15.0, 2: 26.0, 3: 33.0, 9: 1.0})
    assert g.mean == pytest.approx(16 / 3) and g.n == 3
    sd = ((5 - 16 / 3) ** 2 + (4 - 16 / 3) ** 2 + (7 - 16 / 3) ** 2) ** 0.5 / 2 ** 0.5
    assert g.half == pytest.approx(4.302653 * sd / 3 ** 0.5, abs=1e-5)
    # unpaired, the same numbers give a far wider interval: the pairing is what makes the gain measurable
    assert mean_interval([20.0, 30.0, 40.0]).half > 5 * g.half
    assert paired_gain({1: 1.0}, {1: 2.0}) is None


def test_every_configuration_gets_the_same_fresh_seeds():
    from orchestrator.spec import parse_spec
    from orchestrator.sweep.confirm import Candidate, confirm_points

    spec = parse_spec({"name": "c", "search": {"confirm": {"top": 2, "seeds": 3},
                                                "space": {"optim.lr": {"type": "loguniform", "low": 1e-4,
                                                                       "high": 1e-2}}}})
    chosen = [Candidate("t1", "trial_1", {"optim.lr": 1e-3}), Candidate("t2", "trial_2", {"optim.lr": 2e-3}),
              Candidate("base", "base setting", {})]
    points = confirm_points(spec, chosen)
    assert len(points) == 9
    by_config = {}
    for p in points:
        by_config.setdefault(p["of"], []).append(p["seed"])
    assert len({tuple(v) for v in by_config.values()}) == 1          # paired: one seed list for all
    seeds = by_config["base"]
    assert len(set(seeds)) == 3 and min(seeds) > 10_000              # fresh: not the search's seed + trial number
    assert all(p["params"] == c.params for p in points for c in chosen if c.of == p["of"])


def test_the_rescoring_sees_other_noise_than_the_evaluations_that_picked_the_checkpoint():
    import torch

    from alphaflow.evaluation import eval_inputs
    from orchestrator.trial.worker import RESCORE_SEED

    picked_on, _ = eval_inputs(100, (1, 8, 8), 10, seed=1234)       # every evaluation during training
    rescored_on, _ = eval_inputs(100, (1, 8, 8), 10, seed=RESCORE_SEED)
    assert RESCORE_SEED != 1234 and not torch.allclose(picked_on, rescored_on)
    assert abs(torch.corrcoef(torch.stack([picked_on.flatten(), rescored_on.flatten()]))[0, 1]) < 0.05
