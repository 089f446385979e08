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
