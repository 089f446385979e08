"""The end of a sweep: count its trials, register the best ones with their aliases, put the summary on the parent
run; after a resume, reconcile the trials the dead driver started but never recorded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from orchestrator import tracking
from orchestrator.spec import SweepSpec
from orchestrator.sweep.comparison import Gain, gain_over_base
from orchestrator.sweep.pareto import log_front


@dataclass
class SweepOutcome:
    sweep_name: str
    parent_run_id: str
    tracking_uri: str
    experiment: str
    trials: int
    completed: int
    pruned: int
    failed: int
    failures: list[str] = field(default_factory=list)
    metric: str = "fid1"
    best: tracking.BestTrial | None = None
    base: tracking.BestTrial | None = None      # the base setting's trial (search.include_base)
    gain: Gain | None = None                     # the best's gain over it
    confirmation: object | None = None           # sweep.confirm.ConfirmOutcome, with search.confirm
    untrained_fid1: float | None = None
    registered: dict[str, str] = field(default_factory=dict)
    promotions: list[tracking.Promotion] = field(default_factory=list)
    objectives: dict[str, str] = field(default_factory=dict)   # a multi-objective sweep's, else empty
    pareto: list = field(default_factory=list)                # its front (sweep.pareto.Point), numbered
    dashboard_url: str | None = None
    wall_s: float = 0.0


def registered_model_name(spec: SweepSpec, manifest) -> str:
    """The registry name of a sweep's best generators: the spec's, else afsweep-<data set>."""
    return spec.tracking.registered_model or tracking.default_model_name(manifest.dataset_id)


def trial_states(client, experiment_id: str, sweep: str) -> dict[str, str]:
    """trial id -> completed | pruned | failed | running, from the child runs' tags (the source of truth)."""
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep)
    return {r.data.tags[tracking.TRIAL_TAG]: r.data.tags.get(tracking.STATUS_TAG, "running") for r in runs}


def finish(client, spec: SweepSpec, sweep_name: str, parent_run_id: str, tracking_uri: str, experiment_id: str,
            grid, manifest, t0: float) -> SweepOutcome:
    """Count the trials, register the best ones with their aliases, put the summary on the parent run."""
    states = trial_states(client, experiment_id, sweep_name)
    outcome = SweepOutcome(
        sweep_name=sweep_name, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
        experiment=spec.tracking.experiment, trials=len(grid),
        completed=sum(s == "completed" for s in states.values()),
        pruned=sum(s == "pruned" for s in states.values()),
        failed=sum(r.error is not None for r in grid),
        failures=[str(r.error).strip().splitlines()[-1][:300] for r in grid if r.error is not None],
        metric=spec.search.metric,
    )
    outcome.wall_s = time.time() - t0
    summary: dict[str, float] = {"trials_completed": outcome.completed, "trials_pruned": outcome.pruned,
                                 "trials_failed": outcome.failed, "wall_s": outcome.wall_s}
    model_name = registered_model_name(spec, manifest)
    for metric in ("fid1", "fid2"):
        # only trials that ran as designed, scored after training: a failed or untrained model is never registered
        top = tracking.best_trials(client, experiment_id, metric, sweep_name, top=1, mode=spec.search.mode,
                                   finished_only=True)
        if not top:
            continue
        best = top[0]
        summary[f"best_{metric}"] = best.value
        if metric == spec.search.metric and spec.search.confirm is not None:
            # the confirmation stage registers its winner and decides the alias; a single draw moves nothing
            best.model_uri = tracking.registered_uri_for_run(client, best.run_id, metric)
            outcome.best = best
            continue
        promotion = tracking.promote_best(client, tracking_uri, best.run_id, model_name, metric,
                                          policy=spec.tracking.move_aliases, mode=spec.search.mode)
        outcome.promotions.append(promotion)
        outcome.registered[promotion.alias] = promotion.uri
        if metric == spec.search.metric:
            best.model_uri = promotion.uri
            outcome.best = best
    if outcome.best is not None:
        history = client.get_metric_history(outcome.best.run_id, "fid1")
        start = [m.value for m in history if m.step == 0]
        if start:
            outcome.untrained_fid1 = start[0]
            summary["untrained_fid1"] = start[0]
        client.set_tag(parent_run_id, "afsweep.best_run_id", outcome.best.run_id)
        compare_with_base(client, experiment_id, sweep_name, parent_run_id, spec, outcome, summary)
    if spec.search.objectives:
        outcome.objectives = dict(spec.search.objectives)
        outcome.pareto = log_front(client, parent_run_id, experiment_id, sweep_name, outcome.objectives)
    cost = _sum_trial_metric(client, experiment_id, sweep_name, ("cpu_s", "gpu_s", "wall_s"))
    summary.update({f"trials_total_{k}": v for k, v in cost.items()})
    for k, v in summary.items():
        client.log_metric(parent_run_id, k, float(v))
    if outcome.completed == 0:  # nothing ran as designed: the sweep failed, whatever Tune says
        client.set_tag(parent_run_id, "afsweep.error", f"no trial completed ({outcome.failed} failed)")
        client.set_terminated(parent_run_id, status="FAILED")
    return outcome


def compare_with_base(client, experiment_id: str, sweep_name: str, parent_run_id: str, spec: SweepSpec,
                      outcome: SweepOutcome, summary: dict[str, float]) -> None:
    """The base trial, and the best's gain over it, on the outcome and the parent run (`base_<metric>_best`,
    `gain_<metric>`, `gain_<metric>_se`, tag `afsweep.base_run_id`)."""
    metric, best = spec.search.metric, outcome.best
    base = tracking.base_trial(client, experiment_id, sweep_name, metric)
    if base is None:
        return
    outcome.base = base
    outcome.gain = gain_over_base(best.metric, best.value, best.se, base.value, base.se, spec.search.mode,
                                  same_trial=best.run_id == base.run_id)
    client.set_tag(parent_run_id, "afsweep.base_run_id", base.run_id)
    summary[f"base_{metric}_best"] = base.value
    summary[f"gain_{metric}"] = outcome.gain.value
    if outcome.gain.se is not None:
        summary[f"gain_{metric}_se"] = outcome.gain.se


def _sum_trial_metric(client, experiment_id: str, sweep: str, names: tuple[str, ...]) -> dict[str, float]:
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep)
    return {n: sum(r.data.metrics.get(n, 0.0) for r in runs) for n in names}


def grid_trial_ids(grid) -> set[str]:
    ids = set()
    for r in grid:
        tid = (r.metrics or {}).get("trial_id")
        if not tid and r.path:  # trial folders are named <trainable>_<trial_id>_<n>_<params>...
            parts = Path(r.path).name.split("_")
            tid = parts[2] if len(parts) > 2 else None
        if tid:
            ids.add(str(tid))
    return ids


def reconcile_lost_trials(client, experiment_id: str, sweep_name: str, grid, optuna_url: str) -> list[str]:
    """After a resume: a trial the dead driver started after its last snapshot is unknown to the restored sweep,
    which ran a new trial instead. Its MLflow run is tagged lost and soft-deleted (no duplicate child run), and its
    Optuna trial, left RUNNING, is marked FAIL so the study holds no phantom."""
    known = grid_trial_ids(grid)
    lost = []
    for trial_id, run_id in _trial_runs(client, experiment_id, sweep_name).items():
        if trial_id not in known:
            client.set_tag(run_id, tracking.STATUS_TAG, "lost")
            client.set_terminated(run_id, status="KILLED")
            client.delete_run(run_id)
            lost.append(trial_id)
    try:
        study = optuna.load_study(study_name=sweep_name, storage=optuna_url)
    except KeyError:  # no study (random search without storage): nothing to mark
        return lost
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    return lost


def _trial_runs(client, experiment_id: str, sweep: str) -> dict[str, str]:
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep)
    return {r.data.tags[tracking.TRIAL_TAG]: r.info.run_id for r in runs}
