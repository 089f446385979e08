"""Proof 6: the alpha schedule at k_s, the midpoint and k_e, and its eta snapping; the other kinds."""

import math

import pytest

from alphaflow.config import ScheduleConfig
from alphaflow.schedules import schedule_value, transition_end_step


def sched(**kw):
    return ScheduleConfig(**{"kind": "sigmoid", "start": 1.0, "end": 0.0, "k_s": 0.2, "k_e": 0.6, **kw})


def test_proof6_sigmoid_alpha_at_ks_mid_ke():
    s, total = sched(), 1000
    assert schedule_value(s, 0, total) == 1.0
    assert schedule_value(s, 199, total) == 1.0
    assert schedule_value(s, 200, total) == 1.0          # sigmoid(-12.5) ~ 4e-6 < eta: snapped to start
    assert schedule_value(s, 400, total) == pytest.approx(0.5)
    assert schedule_value(s, 600, total) == 0.0
    assert schedule_value(s, 999, total) == 0.0
    k = 430                                              # official get_ratio in between
    assert schedule_value(s, k, total) == pytest.approx(1 - 1 / (1 + math.exp(-25 * (k - 400) / 400)))


def test_proof6_eta_snapping_is_exact():
    s, total = sched(gamma=25.0, eta=5e-3), 1000
    raw = [1 - 1 / (1 + math.exp(-25 * (k - 400) / 400)) for k in range(200, 600)]
    values = [schedule_value(s, k, total) for k in range(200, 600)]
    for r, v in zip(raw, values):
        if r < 5e-3:
            assert v == 0.0
        elif r > 1 - 5e-3:
            assert v == 1.0
        else:
            assert v == pytest.approx(r)
    assert any(0 < r < 5e-3 for r in raw) and any(1 - 5e-3 < r < 1 for r in raw)
    # larger eta snaps earlier
    assert schedule_value(sched(eta=0.2), 500, total) == 0.0
    assert schedule_value(sched(eta=0.0), 500, total) > 0.0


def test_general_start_end_and_steps_unit():
    s = ScheduleConfig(kind="sigmoid", start=0.25, end=0.75, k_s=100, k_e=300, unit="steps")
    assert schedule_value(s, 0, 10) == 0.25          # total_steps ignored with unit=steps
    assert schedule_value(s, 200, 10) == pytest.approx(0.5)
    assert schedule_value(s, 300, 10) == 0.75


@pytest.mark.parametrize("kind,at_quarter", [("linear", 0.75), ("cosine", 1 - (1 - math.cos(math.pi / 4)) / 2),
                                             ("step", 1.0)])
def test_other_kinds(kind, at_quarter):
    s = ScheduleConfig(kind=kind, start=1.0, end=0.0, k_s=0.0, k_e=1.0, eta=0.0)
    assert schedule_value(s, 0, 400) == 1.0
    assert schedule_value(s, 100, 400) == pytest.approx(at_quarter)
    assert schedule_value(s, 400, 400) == 0.0
    assert schedule_value(ScheduleConfig(kind="step", k_s=0.0, k_e=1.0), 200, 400) == 0.0   # end from the midpoint


def test_constant_and_degenerate_window():
    assert schedule_value(ScheduleConfig(kind="constant", start=0.3, end=0.9), 123, 400) == 0.3
    s = ScheduleConfig(kind="linear", k_s=0.5, k_e=0.5)
    assert schedule_value(s, 199, 400) == 1.0 and schedule_value(s, 200, 400) == 0.0


def test_transition_end_step():
    assert transition_end_step(sched(k_e=0.6), 300) == 180
    assert transition_end_step(ScheduleConfig(kind="linear", k_e=250, unit="steps"), 300) == 250
    assert transition_end_step(ScheduleConfig(kind="constant"), 300) == 0


def test_bad_kind_and_unit_name_the_field():
    # refused where the schedule is written, not when it is first used
    with pytest.raises(ValueError, match="kind"):
        ScheduleConfig(kind="exp")
    with pytest.raises(ValueError, match="unit"):
        ScheduleConfig(unit="epochs")
