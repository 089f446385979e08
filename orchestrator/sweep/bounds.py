"""ASHA's bounds from the search space: the longest trial (max_t) and the curriculum-aware grace period, so no
trial is judged before its alpha transition has run."""

from __future__ import annotations

import itertools

from alphaflow.config import ConfigError
from alphaflow.schedules import transition_end_step
from orchestrator.spec import METHOD_KEY, PRESET_KEY, SweepSpec, method_config

# the keys that decide how long a trial is and when its alpha transition ends
_LENGTH_KEYS = ("total_steps", "alpha.kind", "alpha.k_s", "alpha.k_e", "alpha.unit")


def extreme_configs(spec: SweepSpec) -> list:
    """The configurations at the bounds of the searched length and transition keys (and of every searched preset
    and method): what ASHA's max_t and the curriculum-aware grace period must cover."""
    space = spec.search.space
    keys = [k for k in (PRESET_KEY, METHOD_KEY, *_LENGTH_KEYS) if k in space]
    out = []
    for values in itertools.product(*[list(space[k].extremes().values()) for k in keys]):
        try:
            out.append(method_config(spec, dict(zip(keys, values))))
        except ConfigError:  # e.g. k_e before k_s: a combination the search cannot produce
            continue
    return out or [method_config(spec, {})]


def max_total_steps(spec: SweepSpec) -> int:
    """The longest trial the space can produce (ASHA's max_t: a trial reaching it counts as finished)."""
    return max(c.total_steps for c in extreme_configs(spec))


def transition_end_steps(spec: SweepSpec) -> int:
    """The latest step at which any configuration of the space ends its alpha transition.

    Curriculum-aware early stopping: no trial is judged before its curriculum has run.
    """
    return max(min(c.total_steps, transition_end_step(c.alpha, c.total_steps)) for c in extreme_configs(spec))


def grace_period(spec: SweepSpec, echo=print) -> int:
    end = transition_end_steps(spec)
    forced = spec.search.early_stopping.grace_period
    if forced is None:
        return max(1, end)
    if forced < end:
        echo(f"afsweep: warning: early_stopping.grace_period={forced} is before the end of the alpha transition "
             f"(step {end}); some curricula will be judged before they have run")
    return forced
