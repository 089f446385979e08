"""From a sweep spec to Ray Tune search: the Optuna define-by-run space, the searcher and the ASHA scheduler."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from alphaflow.config import flatten
from orchestrator.spec import PRESET_KEY, SweepSpec, method_config
from orchestrator.spec.objectives import search_objectives, told_key
from orchestrator.spec.search_space import Fixed, grid_of
from orchestrator.spec.trial_config import BASE_ROLE, ROLE_KEY

log = logging.getLogger(__name__)


def _condition_holds(when: dict[str, Any] | None, params: dict[str, Any]) -> bool:
    for name, wanted in (when or {}).items():
        if name not in params:
            return False
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if params[name] not in allowed:
            return False
    return True


class DefineByRun:
    """The Optuna define-by-run function: conditional parameters exist only when their condition holds.

    Parameters are drawn in spec order, so a condition may refer to any parameter listed before it.
    Fixed values are returned as constants (Optuna does not search them). A class, not a closure: Tune pickles the
    searcher into the experiment checkpoint that `afsweep resume` restores.
    """

    def __init__(self, space: dict[str, Any]):
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        params: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for key, dist in self.space.items():
            if not _condition_holds(dist.when, params):
                continue
            value = dist.suggest(trial, key)
            params[key] = value
            if isinstance(dist, Fixed):
                constants[key] = value
        return constants


def define_by_run(spec: SweepSpec) -> DefineByRun:
    return DefineByRun(dict(spec.search.space))


class TuneGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler as Tune drives it: trial number i runs combination i (shuffled by the seed), so a sweep
    of num_trials = grid size runs each once. Tune's num_samples ends the sweep: GridSampler's own `study.stop()`
    after the last combination raises outside `study.optimize` (Tune uses ask and tell), so it is not called."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def is_base(trial_config: dict) -> bool:
    """The sweep's base trial (search.include_base): its Tune config carries the base role, no searched value."""
    return trial_config.get(ROLE_KEY) == BASE_ROLE


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED, not COMPLETE, for a trial that stopped before its last step, and
    (`base_first`) hands out the spec's base setting as the first trial.

    Ray hands an ASHA-stopped trial to the searcher as an ordinary completion with the truncated score
    (docs/platform.md#pruned-trials); TPE would then learn from a score the trial never reached.
    The base trial is a reference, not a search point (its values may lie outside the space): Optuna never sees it.
    Whether it was handed out is part of the pickled state `afsweep resume` restores, so it runs once.
    """

    def __init__(self, *args, base_first: bool = False, base_values: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._base_pending = base_first
        self._base_values = dict(base_values or {})   # shown in Tune's table only; the trial ignores them
        self._base_trial: str | None = None

    def suggest(self, trial_id: str):
        if self._base_pending:
            self._base_pending, self._base_trial = False, trial_id
            return {**self._base_values, ROLE_KEY: BASE_ROLE}
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict):
        # checkpoint-only reports (train.checkpoint_every) carry no score: nothing to tell Optuna
        if trial_id == self._base_trial or (isinstance(self.metric, str) and self.metric not in result):
            return
        super().on_trial_result(trial_id, result)

    def restore(self, checkpoint_path: str):
        """`afsweep resume`: the searcher as the dead driver last saved it. A grid's combination handed to a trial
        the driver started after that snapshot (its Optuna trial RUNNING, unknown here) would never run: it is
        enqueued again, so the trial Tune starts in its place runs it, and the lost Optuna trial is marked FAIL."""
        super().restore(checkpoint_path)
        if not isinstance(self._sampler, optuna.samplers.GridSampler):
            return
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number not in known:
                self._ot_study.enqueue_trial(t.params)
                self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                log.warning("optuna: grid combination %s of a lost trial queued again", t.params)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if trial_id == self._base_trial:
            return
        stopped_early = (
            not error
            and result is not None
            and result.get("step") is not None
            and result.get("total_steps") is not None
            and result["step"] < result["total_steps"]
        )
        if not stopped_early or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        try:
            # Tune never passes the result ASHA stopped the trial on to on_trial_result; Optuna keeps a pruned
            # trial's last intermediate value, so that result is reported first: the study holds the trial's last
            # told value, as ASHA, MLflow and `afsweep best` do, not the one of the rung before
            told = result.get(self.metric) if isinstance(self.metric, str) else None
            if told is not None:
                self._ot_trials[trial_id].report(told, result.get("training_iteration", 0))
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # e.g. told twice after a resume: keep the sweep going
            log.warning("optuna: could not mark trial %s pruned: %s", trial_id, exc)
        self._completed_trials.add(trial_id)


def startup_trials(spec: SweepSpec) -> int:
    """Random trials before TPE models the results. Optuna's default (10) would make every sweep of 10 trials or
    fewer a random search; a quarter of the budget, between 2 and 10, lets TPE act in small sweeps too."""
    s = spec.search
    return s.startup_trials or min(10, max(2, s.num_trials // 4))


def make_sampler(spec: SweepSpec):
    """The Optuna sampler of a sweep (the same one `afsweep preview` plans with)."""
    s = spec.search
    if s.algorithm == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.algorithm == "grid":
        return TuneGridSampler(grid_of(s.space), seed=s.seed)
    if s.algorithm == "optuna-gp":
        # a Gaussian process over the space (parameters a `when:` leaves out are sampled at random)
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=startup_trials(spec))
    return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=startup_trials(spec))


def tune_metric(spec: SweepSpec) -> str:
    """What Optuna and ASHA learn from: the trial's best score so far (`fid1_best`), the one its registered
    checkpoint has and `afsweep best` ranks by, not its latest (a trial that got worse late would report a value no
    checkpoint of it is kept for)."""
    return told_key(spec.search.metric)


def searcher_objective(spec: SweepSpec) -> tuple[str | list[str], str | list[str]]:
    """OptunaSearch's metric and mode: one told key, or (multi-objective, `search.objectives`) a list of them and
    their modes, in the spec's order."""
    objectives = search_objectives(spec.search)
    if len(objectives) == 1:
        return tune_metric(spec), spec.search.mode
    return [told_key(m) for m in objectives], list(objectives.values())


def base_values(spec: SweepSpec) -> dict[str, Any]:
    """What the base setting has for each searched key ("-" where it has none, e.g. a searched `method`): the
    base trial's columns in Tune's progress table, which looks every searched key up in every trial's config."""
    dotted = flatten(method_config(spec, {}))
    dotted[PRESET_KEY] = spec.base.preset
    return {key: dotted.get(key, "-") for key in spec.search.space}


def make_searcher(spec: SweepSpec, study_name: str, storage_url: str | None, warm=None):
    """Optuna through OptunaSearch: TPE (multi-objective TPE when the spec names several objectives), its GP sampler
    for `algorithm: optuna-gp`, its random sampler for `algorithm: random` (same space rules), or its grid sampler
    for `algorithm: grid`.
    `warm` (sweep.warm_start.WarmStart): an earlier sweep's trials copied into the study first, and its best
    configurations tried first."""
    s = spec.search
    metric, mode = searcher_objective(spec)
    points = list(s.points_to_evaluate) + (warm.points if warm else [])
    optuna_search = PrunedAwareOptunaSearch(
        space=define_by_run(spec),
        metric=metric,
        mode=mode,
        sampler=make_sampler(spec),
        study_name=study_name,
        storage=optuna.storages.RDBStorage(storage_url) if storage_url else None,
        points_to_evaluate=(points or None) if warm is None else None,
        base_first=s.include_base,
        base_values=base_values(spec),
    )
    if warm is not None:
        # the study exists once OptunaSearch has a space: the history first (trials 0..n-1, as it happened), then
        # the points to run first, enqueued as OptunaSearch would have
        optuna_search._ot_study.add_trials(warm.history)
        for point in points:
            optuna_search._ot_study.enqueue_trial(point)
    return ConcurrencyLimiter(optuna_search, max_concurrent=s.max_concurrent)


class BaseRunsToItsEnd(ASHAScheduler):
    """ASHA that never stops the base trial: the reference is measured at full length like the trials it is
    compared with. Its scores still count in the rungs (a searched trial worse than the base may be stopped)."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if is_base(trial.config) else decision


def make_scheduler(spec: SweepSpec, total_steps: int, grace_period: int):
    """ASHA on the same value the searcher is told (`tune_metric`), or no early stopping."""
    es = spec.search.early_stopping
    if es.scheduler == "none":
        return FIFOScheduler()
    scheduler = BaseRunsToItsEnd(
        time_attr="step",
        max_t=total_steps,
        grace_period=grace_period,
        reduction_factor=es.reduction_factor,
    )
    scheduler.set_search_properties(tune_metric(spec), spec.search.mode)
    return scheduler
