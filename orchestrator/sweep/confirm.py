"""The confirmation stage (search.confirm): the search's best configurations and the base setting trained again on
fresh seeds, scored on fresh evaluation noise, and the winner chosen by its mean with an interval.

Why: a search ranks single noisy draws, and the seed's noise is larger than the gaps it ranks (docs/results.md);
its best is the maximum of those draws, an optimistic number. Here every candidate runs with the same M seeds
(paired: the same initial weights and data order), to its end, as trials of a second Tune experiment
(`<sweep>-confirm`, same storage, fault tolerance and resume), each an MLflow run of kind `confirm` tagged with the
search trial it confirms and its seed. Each run's picked checkpoint is scored again on noise its choice never saw
(the worker's `rescore`), so the means are unbiased.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ray import tune

from orchestrator import tracking
from orchestrator.platform.places import SweepPlaces, storage_filesystem
from orchestrator.spec import SweepSpec
from orchestrator.spec.trial_config import CONFIRM_KEY, SweepContext
from orchestrator.sweep.comparison import Interval, mean_interval, paired_gain
from orchestrator.sweep.finish import grid_trial_ids
from orchestrator.trial.trainable import (
    SETTINGS_KEY,
    DriverHeartbeat,
    MlflowTrialCloser,
    run_trial,
    trial_dirname,
    trial_params,
)

# the first fresh seed: far from the search trials' (the spec's seed plus the trial number)
FIRST_SEED = 1_000_003
BASE = "base"                        # what a confirmation run of the base setting confirms
SUMMARY_ARTIFACT = tracking.CONFIRMATION_ARTIFACT
SCORE = "fid1_rescored"              # the score a confirmation run is judged by (search.metric fid2: fid2_rescored)


def experiment_name(sweep_name: str) -> str:
    return f"{sweep_name}-confirm"


def score_key(spec: SweepSpec) -> str:
    return f"{spec.search.metric}_rescored"


@dataclass
class Candidate:
    of: str                  # the search trial id, or `base`
    name: str                # its run name (the base: `base setting`)
    params: dict             # its searched values
    run_id: str | None = None  # its search run


def candidates(client, spec: SweepSpec, experiment_id: str, sweep_name: str, grid) -> list[Candidate]:
    """The search's `top` best configurations (finished as designed, not the base) and the base setting."""
    k, metric = spec.search.confirm.top, spec.search.metric
    by_trial = {}
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id")
        if trial_id:
            by_trial[str(trial_id)] = trial_params(r.config)
    best = tracking.best_trials(client, experiment_id, metric, sweep_name, top=k + 1, mode=spec.search.mode,
                                finished_only=True)
    out = []
    for b in best:
        trial_id = client.get_run(b.run_id).data.tags[tracking.TRIAL_TAG]
        if b.role == "base" or trial_id not in by_trial or len(out) == k:
            continue
        out.append(Candidate(of=trial_id, name=b.run_name, params=by_trial[trial_id], run_id=b.run_id))
    base = tracking.base_trial(client, experiment_id, sweep_name, metric)
    out.append(Candidate(of=BASE, name="base setting", params={}, run_id=base.run_id if base else None))
    return out


def seeds(spec: SweepSpec) -> list[int]:
    """The M fresh seeds, the same for every configuration (the pairing)."""
    return [FIRST_SEED + i for i in range(spec.search.confirm.seeds)]


def confirm_points(spec: SweepSpec, chosen: list[Candidate]) -> list[dict]:
    """One confirmation trial per (configuration, seed)."""
    return [{"of": c.of, "name": c.name, "params": c.params, "seed": s} for c in chosen for s in seeds(spec)]


def param_space(spec: SweepSpec, sweep: SweepContext, points: list[dict]) -> dict:
    return {SETTINGS_KEY: {"spec": spec, "sweep": sweep}, CONFIRM_KEY: tune.grid_search(points)}


def make_confirm_tuner(spec: SweepSpec, sweep: SweepContext, places: SweepPlaces, points: list[dict]) -> tune.Tuner:
    """The confirmation trials as a Tune grid over (configuration, seed), every one to its end (no scheduler, no
    searcher), with the search's trainable, storage, MLflow closer and heartbeat."""
    storage_fs, storage_path = storage_filesystem(places.storage)
    return tune.Tuner(
        tune.with_resources(run_trial, {"cpu": 1}),
        param_space=param_space(spec, sweep, points),
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=spec.search.max_concurrent,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=experiment_name(sweep.sweep_name), storage_path=storage_path, storage_filesystem=storage_fs,
            callbacks=[MlflowTrialCloser(sweep.tracking_uri, sweep.experiment_id, sweep.sweep_name),
                       DriverHeartbeat(sweep.tracking_uri, sweep.parent_run_id)],
            failure_config=tune.FailureConfig(max_failures=spec.train.max_failures),
            verbose=1,
        ),
    )


def restore_confirm_tuner(spec: SweepSpec, sweep: SweepContext, places: SweepPlaces, points: list[dict]
                          ) -> tune.Tuner | None:
    """The confirmation stage a dead driver had started, to finish (None if it had not started). The param space
    is given again: Tune's saved one holds references in place of the spec and context objects, which trials
    created after the restore would otherwise receive."""
    fs, path = storage_filesystem(places.sweep_dir(experiment_name(sweep.sweep_name)))
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        return None
    return tune.Tuner.restore(path, trainable=tune.with_resources(run_trial, {"cpu": 1}), resume_unfinished=True,
                              resume_errored=True, storage_filesystem=fs,
                              param_space=param_space(spec, sweep, points))


@dataclass
class Confirmed:
    """One configuration's confirmation: its score per seed, their mean and interval, its paired gain over the
    base setting."""
    of: str
    name: str
    params: dict
    search_run_id: str | None
    scores: dict[int, float] = field(default_factory=dict)     # seed -> re-scored metric
    run_ids: dict[int, str] = field(default_factory=dict)      # seed -> confirmation run
    interval: Interval | None = None
    gain: Interval | None = None                               # over the base, paired by seed (None for the base)

    def as_dict(self) -> dict:
        iv, g = self.interval, self.gain
        return {"of": self.of, "name": self.name, "params": self.params, "search_run_id": self.search_run_id,
                "scores": {str(k): v for k, v in self.scores.items()}, "run_ids": {str(k): v for k, v in
                                                                                self.run_ids.items()},
                "mean": iv.mean if iv else None, "half": iv.half if iv else None, "n": iv.n if iv else len(
                    self.scores), "gain": g.mean if g else None, "gain_half": g.half if g else None}


def summarize(client, spec: SweepSpec, experiment_id: str, sweep_name: str, chosen: list[Candidate]
              ) -> list[Confirmed]:
    """Each candidate's confirmation from its MLflow runs (completed ones with a re-scored score), best mean
    first; the base setting last whatever its mean."""
    key = score_key(spec)
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep_name, kind="confirm")
    by_of = {c.of: Confirmed(of=c.of, name=c.name, params=c.params, search_run_id=c.run_id) for c in chosen}
    for r in runs:
        c = by_of.get(r.data.tags.get(tracking.CONFIRMS_TAG, ""))
        if c is None or r.data.tags.get(tracking.STATUS_TAG) != "completed" or key not in r.data.metrics:
            continue
        seed = int(r.data.tags[tracking.SEED_TAG])
        c.scores[seed], c.run_ids[seed] = r.data.metrics[key], r.info.run_id
    base = by_of.get(BASE)
    for c in by_of.values():
        if len(c.scores) >= 2:
            c.interval = mean_interval([c.scores[s] for s in sorted(c.scores)])
        if base is not None and c is not base:
            c.gain = paired_gain(base.scores, c.scores, spec.search.mode)
    sign = 1 if spec.search.mode == "min" else -1
    ranked = sorted((c for c in by_of.values() if c.of != BASE and c.interval is not None),
                    key=lambda c: sign * c.interval.mean)
    unranked = [c for c in by_of.values() if c.of != BASE and c.interval is None]
    return ranked + unranked + ([base] if base is not None else [])


def winner_of(confirmed: list[Confirmed]) -> Confirmed | None:
    """The configuration with the best mean (the base setting included: it may win)."""
    scored = [c for c in confirmed if c.interval is not None]
    if not scored:
        return None
    ranked = [c for c in confirmed if c.of != BASE and c.interval is not None]
    base = next((c for c in confirmed if c.of == BASE and c.interval is not None), None)
    if ranked and (base is None or ranked[0].interval.mean <= base.interval.mean):
        return ranked[0]
    return base if base is not None else ranked[0]


def log_summary(client, parent_run_id: str, spec: SweepSpec, confirmed: list[Confirmed],
                winner: Confirmed | None) -> None:
    """The confirmation on the parent run (metrics and confirmation.json) and on each search run it confirms
    (`confirmed_<metric>_mean`, `_half`, `_n`, `confirmed_gain`, `_half`: what `afsweep best` ranks by)."""
    metric = spec.search.metric
    client.log_text(parent_run_id, json.dumps({"metric": metric, "seeds": seeds(spec),
                                               "winner": winner.of if winner else None,
                                               "configurations": [c.as_dict() for c in confirmed]}, indent=2),
                    SUMMARY_ARTIFACT)
    for c in confirmed:
        if c.interval is None:
            continue
        values = {f"confirmed_{metric}_mean": c.interval.mean, f"confirmed_{metric}_half": c.interval.half,
                  f"confirmed_{metric}_n": c.interval.n}
        if c.gain is not None:
            values.update(confirmed_gain=c.gain.mean, confirmed_gain_half=c.gain.half)
        if c.search_run_id:
            for k, v in values.items():
                client.log_metric(c.search_run_id, k, float(v))
        if c is winner:
            for k, v in values.items():
                client.log_metric(parent_run_id, f"winner_{k}", float(v))
        if c.of == BASE:
            for k, v in values.items():
                client.log_metric(parent_run_id, f"base_{k}", float(v))
    if winner is not None:
        client.set_tag(parent_run_id, "afsweep.confirmed_winner", winner.name)


PLAN_ARTIFACT = "confirm_plan.json"


@dataclass
class ConfirmOutcome:
    seeds: list[int]
    eval_samples: int
    confirmed: list[Confirmed]
    winner: Confirmed | None
    promotion: tracking.Promotion | None
    failed: int = 0


def confirm_stage(client, spec: SweepSpec, sweep: SweepContext, places: SweepPlaces, grid, echo,
                  resuming: bool = False) -> ConfirmOutcome:
    """Run (or, resuming, finish) the confirmation stage, then choose and register the winner. The plan (which
    configurations, which seeds) is written to the parent run before any trial starts, so a resumed driver
    summarizes exactly what the dead one started."""
    parent = sweep.parent_run_id
    client.set_tag(parent, tracking.STAGE_TAG, "confirm")
    plan = tracking.read_json_artifact(client, parent, PLAN_ARTIFACT) if resuming else None
    if plan is not None:   # the dead driver's plan, and its trials where it had started them
        chosen = [Candidate(**c) for c in plan]
        points = confirm_points(spec, chosen)
        tuner = restore_confirm_tuner(spec, sweep, places, points) or make_confirm_tuner(spec, sweep, places, points)
    else:
        chosen = candidates(client, spec, sweep.experiment_id, sweep.sweep_name, grid)
        points = confirm_points(spec, chosen)
        client.log_text(parent, json.dumps([c.__dict__ for c in chosen], indent=2), PLAN_ARTIFACT)
        client.log_metric(parent, "confirm_trials", float(len(points)))
        tuner = make_confirm_tuner(spec, sweep, places, points)
    n_eval = spec.search.confirm.eval_samples or spec.train.eval_samples
    echo(f"afsweep: confirmation: {len(chosen) - 1} best configuration(s) and the base setting, each trained again "
         f"on the same {spec.search.confirm.seeds} fresh seeds to its end, its picked checkpoint scored on fresh "
         f"noise with N={n_eval}")
    results = tuner.fit()
    if resuming:
        drop_lost_runs(client, sweep, results)
    confirmed = summarize(client, spec, sweep.experiment_id, sweep.sweep_name, chosen)
    winner = winner_of(confirmed)
    promotion = register_winner(client, spec, sweep, winner, n_eval) if winner is not None else None
    log_summary(client, parent, spec, confirmed, winner)
    client.set_tag(parent, tracking.STAGE_TAG, "done")
    return ConfirmOutcome(seeds=seeds(spec), eval_samples=n_eval, confirmed=confirmed, winner=winner,
                          promotion=promotion, failed=sum(r.error is not None for r in results))


def drop_lost_runs(client, sweep: SweepContext, results) -> None:
    """A confirmation trial the dead driver started after its last snapshot is unknown to the restored stage, which
    ran a new trial for its (configuration, seed): its MLflow run is tagged lost and soft-deleted (no duplicate)."""
    known = grid_trial_ids(results)
    runs = tracking.sweep_trial_runs(client, sweep.experiment_id, sweep.sweep_name, kind="confirm")
    for r in runs:
        if r.data.tags.get(tracking.TRIAL_TAG) not in known:
            client.set_tag(r.info.run_id, tracking.STATUS_TAG, "lost")
            client.set_terminated(r.info.run_id, status="KILLED")
            client.delete_run(r.info.run_id)


def register_winner(client, spec: SweepSpec, sweep: SweepContext, winner: Confirmed, n_eval: int):
    """The winner's best confirmation run registered, carrying the configuration's confirmed numbers."""
    metric, iv = spec.search.metric, winner.interval
    run_id = winner.run_ids[min(winner.scores, key=lambda s: winner.scores[s] if spec.search.mode == "min"
                                else -winner.scores[s])]
    gain = (f"; gain over the base setting {winner.gain.text(3)} (paired by seed)" if winner.gain is not None
            else "")
    description = (f"afsweep sweep {sweep.sweep_name}: confirmed winner {winner.name}. {metric} {iv.text(3)} over "
                   f"{iv.n} fresh training seeds, each run's picked checkpoint re-scored on fresh noise "
                   f"(N={n_eval}){gain}. This version is the seed with the best re-scored {metric}.")
    extra = {"afsweep.confirmed_config": winner.name, "afsweep.sweep": sweep.sweep_name}
    if winner.gain is not None:
        extra.update({"afsweep.gain_over_base": f"{winner.gain.mean:.6g}",
                      "afsweep.gain_over_base_half": f"{winner.gain.half:.6g}"})
    model_name = client.get_run(sweep.parent_run_id).data.params.get("registered_model")
    return tracking.promote_confirmed(client, sweep.tracking_uri, run_id, model_name, metric, iv.mean, iv.half,
                                      iv.n, description, extra, spec.search.mode)
