"""Values over training (alpha, ratio_fm): constant, step, linear, cosine, sigmoid (docs/method.md#curriculum).

Every kind goes from `start` to `end` between k_s and k_e (in steps, or as fractions of total_steps when
unit = "fraction"): `start` before k_s, `end` from k_e on. In between, with f = (k - k_s) / (k_e - k_s):
- constant: always `start` (k_s, k_e, end are ignored);
- step: `start` while k < (k_s + k_e) / 2, `end` from the midpoint on;
- linear: start + (end - start) f;
- cosine: start + (end - start) (1 - cos(pi f)) / 2;
- sigmoid: start + (end - start) sigmoid(gamma (k - (k_s + k_e) / 2) / (k_e - k_s)); with start = 1, end = 0 this
  is the official `get_ratio`: alpha = 1 - sigmoid(gamma (k - mid) / (k_e - k_s)).
Then (all kinds but constant) the value snaps to exactly `end` within eta of it, and to exactly `start` within
eta of it. With k_s == k_e every kind is a step at k_s.
"""

from __future__ import annotations

import math

KINDS = ("constant", "step", "linear", "cosine", "sigmoid")


def _bounds(sched, total_steps: int) -> tuple[float, float]:
    if sched.unit == "fraction":
        return sched.k_s * total_steps, sched.k_e * total_steps
    if sched.unit == "steps":
        return float(sched.k_s), float(sched.k_e)
    raise ValueError(f"schedule unit: {sched.unit!r} is not one of fraction, steps")


def schedule_value(sched, step: int, total_steps: int) -> float:
    """The value of the schedule `sched` (a ScheduleConfig) at optimizer step `step` of `total_steps`."""
    if sched.kind not in KINDS:
        raise ValueError(f"schedule kind: {sched.kind!r} is not one of {', '.join(KINDS)}")
    start, end = float(sched.start), float(sched.end)
    if sched.kind == "constant":
        return start
    k_s, k_e = _bounds(sched, total_steps)
    k = float(step)
    if k < k_s:
        return start
    if k >= k_e:
        return end
    f = (k - k_s) / (k_e - k_s)         # k_s <= k < k_e, so k_e > k_s here
    if sched.kind == "step":
        value = start if f < 0.5 else end
    elif sched.kind == "linear":
        value = start + (end - start) * f
    elif sched.kind == "cosine":
        value = start + (end - start) * (1 - math.cos(math.pi * f)) / 2
    else:  # sigmoid
        z = sched.gamma * (f - 0.5)
        value = start + (end - start) / (1 + math.exp(-z))
    if abs(value - end) < sched.eta:
        return end
    if abs(value - start) < sched.eta:
        return start
    return value


def transition_end_step(sched, total_steps: int) -> int:
    """The first step from which the schedule holds its final value (`end`; 0 for constant)."""
    if sched.kind == "constant":
        return 0
    _, k_e = _bounds(sched, total_steps)
    return int(math.ceil(k_e))
