"""Warm start: a new sweep's Optuna study begins with an earlier sweep's trials, read from MLflow.

Each earlier trial becomes an Optuna trial of the new study (`create_trial`): its parameters as MLflow recorded them
(6 significant digits), read in the new search space, and its told values for the new sweep's objectives (a
score's best so far, a cost's total; orchestrator/spec/objectives.py). Completed trials are COMPLETE, ASHA-stopped ones
PRUNED; failed, lost or running ones are left out. A trial with a value outside the new space (or a parameter the
new space needs and it did not record) is left out, not clipped: its score was measured somewhere the new sweep
does not search. Only values within the rounding of a bound are put on the bound. The best `warm_start_top`
configurations are also enqueued, so the new sweep runs them first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna

from alphaflow.errors import InputError
from orchestrator import tracking
from orchestrator.platform.places import hide_secret
from orchestrator.spec import SweepSpec
from orchestrator.spec.objectives import search_objectives, told_key
from orchestrator.spec.search_space import Choice, Fixed, IntRange, Uniform
from orchestrator.sweep.search import DefineByRun, _condition_holds

ROUNDING = 1e-5   # MLflow params keep 6 significant digits: a bound read back may sit this far outside itself


class WarmStartError(ValueError, InputError):
    """search.warm_start names nothing usable: one line, exit 2."""


@dataclass
class WarmStart:
    sweep: str
    history: list[optuna.trial.FrozenTrial] = field(default_factory=list)   # copied into the new study
    points: list[dict[str, Any]] = field(default_factory=list)             # the best configurations, run first
    left_out: list[str] = field(default_factory=list)                      # "<run>: why", one per trial

    def line(self) -> str:
        """What was copied, in one line."""
        states = [t.state.name.lower() for t in self.history]
        text = (f"afsweep: warm start from sweep {self.sweep}: {len(self.history)} of its trials in the study "
                f"({states.count('complete')} complete, {states.count('pruned')} pruned), its best "
                f"{len(self.points)} run first")
        if self.left_out:
            more = f" and {len(self.left_out) - 1} more" if len(self.left_out) > 1 else ""
            text += f"; {len(self.left_out)} left out (not clipped): {self.left_out[0]}{more}"
        return text


def resolve_sweep(client, experiment: str, name: str, uri: str) -> tuple[str, str]:
    """(experiment id, sweep name) of `warm_start`: a sweep of the experiment, or `latest`, its newest."""
    where = f"experiment '{experiment}' at {hide_secret(uri)}"
    exp = client.get_experiment_by_name(experiment)
    known = tracking.sweep_names(client, exp.experiment_id) if exp else []
    if name == "latest":
        if not known:
            raise WarmStartError(f"search.warm_start: latest: {where} holds no earlier sweep")
        return exp.experiment_id, known[0]
    if exp is None or tracking.find_sweep_run(client, exp.experiment_id, name) is None:
        listed = f" (sweeps: {', '.join(known)})" if known else " (no sweep has run there)"
        raise WarmStartError(f"search.warm_start: no sweep named '{name}' in {where}{listed}")
    return exp.experiment_id, name


def _read(dist, text: str) -> tuple[Any, str | None]:
    """A recorded param as a value of the new distribution, or why it is not one."""
    if isinstance(dist, (Fixed, Choice)):
        options = [dist.value] if isinstance(dist, Fixed) else dist.values
        for option in options:   # compared as MLflow wrote them
            if tracking.flat_params({"v": option})["v"] == text:
                return option, None
        return None, (f"is not the fixed value {dist.value}" if isinstance(dist, Fixed) else f"is not one of {options}")
    try:
        value = float(text)
    except ValueError:
        return None, "is not a number"
    low, high = dist.low, dist.high
    tol = ROUNDING * max(abs(low), abs(high))
    if not low - tol <= value <= high + tol:
        return None, f"is outside [{low}, {high}]"
    value = min(max(value, low), high)
    if isinstance(dist, IntRange):
        if value != int(value) or (int(value) - low) % dist.step:
            return None, f"is not on the grid {low}..{high} step {dist.step}"
        return int(value), None
    assert isinstance(dist, Uniform)
    return value, None


def _params(space: dict, recorded: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """The Optuna params of an earlier trial in the new space (in spec order, conditions as DefineByRun has them),
    or why it has none."""
    seen: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, dist in space.items():
        if not _condition_holds(dist.when, seen):
            continue
        if key not in recorded:
            return {}, f"no {key} recorded"
        value, why = _read(dist, recorded[key])
        if why:
            return {}, f"{key}={recorded[key]} {why}"
        seen[key] = value
        if not isinstance(dist, Fixed):
            params[key] = value
    return params, None


def _distributions(space: dict, params: dict[str, Any]) -> dict:
    """Optuna's distributions of these params: the define-by-run function itself, on a FixedTrial."""
    trial = optuna.trial.FixedTrial(params)
    DefineByRun(space)(trial)
    return trial.distributions


def _frozen(run, space: dict, objectives: dict[str, str]) -> tuple[optuna.trial.FrozenTrial | None, str | None]:
    state = run.data.tags.get(tracking.STATUS_TAG, "running")
    if state not in tracking.REGISTERABLE_STATES:
        return None, f"{run.info.run_name}: {state}"
    params, why = _params(space, run.data.params)
    if why:
        return None, f"{run.info.run_name}: {why}"
    metrics = run.data.metrics
    values = [metrics.get(told_key(m), math.nan) for m in objectives]
    dists = _distributions(space, params)
    if state == "pruned":   # ASHA stopped it: what it reached, as Optuna keeps a pruned trial (single objective)
        step = int(run.data.tags.get(tracking.STOPPED_AT_TAG, 0) or 0)
        inter = {step: values[0]} if len(values) == 1 and math.isfinite(values[0]) else None
        return optuna.trial.create_trial(params=params, distributions=dists, state=optuna.trial.TrialState.PRUNED,
                                         intermediate_values=inter), None
    missing = [told_key(m) for m, v in zip(objectives, values) if not math.isfinite(v)]
    if missing:
        return None, f"{run.info.run_name}: no {', '.join(missing)}"
    return optuna.trial.create_trial(params=params, distributions=dists, values=values), None


def read_warm_start(client, spec: SweepSpec, uri: str) -> WarmStart | None:
    """The earlier sweep's trials for the new spec's study, or None without `search.warm_start`."""
    s = spec.search
    if not s.warm_start:
        return None
    experiment_id, sweep = resolve_sweep(client, spec.tracking.experiment, s.warm_start, uri)
    objectives = search_objectives(s)
    warm = WarmStart(sweep=sweep)
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep, order_by=["attributes.start_time ASC"])
    for run in runs:
        trial, why = _frozen(run, dict(s.space), objectives)
        if trial is None:
            warm.left_out.append(why)
        else:
            warm.history.append(trial)
    if not warm.history:
        first = f": {warm.left_out[0]}" if warm.left_out else ""
        raise WarmStartError(f"search.warm_start: sweep {sweep}: none of its {len(runs)} trials fits this "
                             f"sweep's space and objectives{first}")
    # the best first, by the first objective (a multi-objective sweep's primary one); one run per configuration
    primary_mode = next(iter(objectives.values()))
    complete = [t for t in warm.history if t.state == optuna.trial.TrialState.COMPLETE]
    complete.sort(key=lambda t: t.values[0] if primary_mode == "min" else -t.values[0])
    for t in complete:
        if len(warm.points) >= s.warm_start_top:
            break
        if t.params not in warm.points:
            warm.points.append(dict(t.params))
    return warm
