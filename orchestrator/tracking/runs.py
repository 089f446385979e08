"""A sweep in MLflow: the parent run, one child run per trial, their tags and states, the best trials, the status."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from orchestrator.tracking.provenance import log_dataset_input
from orchestrator.tracking.registry import registered_uri_for_run

KIND_TAG = "afsweep.kind"
SWEEP_TAG = "afsweep.sweep"
TRIAL_TAG = "afsweep.trial_id"
STATUS_TAG = "afsweep.status"
ROLE_TAG = "afsweep.role"   # search, or base: the spec's base setting, the reference the best is measured against
CONFIRMS_TAG = "afsweep.confirms"   # a confirmation run: the search trial id it confirms, or `base`
SEED_TAG = "afsweep.seed"           # ... and its training seed
STAGE_TAG = "afsweep.stage"         # the parent run: search, confirm, done
CONFIRMATION_ARTIFACT = "confirmation.json"   # the parent run: the confirmation stage's summary


def flat_params(params: dict[str, Any]) -> dict[str, str]:
    """MLflow params are strings; numbers stay plain numbers so the UI's parallel coordinates can plot them."""
    out = {}
    for k, v in params.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        out[k] = str(v)[:6000]
    return out


def param_value(text: str | None):
    """An MLflow param (always a string) as the value it was: numbers as numbers, the rest as text."""
    if text is None:
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def start_sweep_run(client: MlflowClient, experiment_id: str, sweep_name: str, spec_yaml: str,
                    params: dict[str, Any]) -> str:
    run = client.create_run(experiment_id, run_name=sweep_name, tags={KIND_TAG: "sweep", SWEEP_TAG: sweep_name})
    client.log_text(run.info.run_id, spec_yaml, "spec.yaml")
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in flat_params(params).items()])
    return run.info.run_id


def find_sweep_run(client: MlflowClient, experiment_id: str, sweep_name: str) -> str | None:
    runs = client.search_runs([experiment_id], f"tags.`{KIND_TAG}` = 'sweep' and tags.`{SWEEP_TAG}` = '{sweep_name}'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


def sweep_trial_runs(client: MlflowClient, experiment_id: str, sweep: str | None,
                     order_by: list[str] | None = None, kind: str = "trial"):
    """Every child run of one sweep, or (sweep None) of every sweep of the experiment; deleted runs excluded.
    kind: `trial` (the search), or `confirm` (the confirmation stage's runs)."""
    filt = f"tags.`{KIND_TAG}` = '{kind}'" + (f" and tags.`{SWEEP_TAG}` = '{sweep}'" if sweep else "")
    return client.search_runs([experiment_id], filt, order_by=order_by, max_results=10_000)


def find_trial_run(client: MlflowClient, experiment_id: str, sweep_name: str, trial_id: str,
                   kind: str = "trial") -> str | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{KIND_TAG}` = '{kind}' and tags.`{SWEEP_TAG}` = '{sweep_name}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def get_or_create_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, sweep_name: str,
                            trial_id: str, trial_name: str, params: dict[str, Any],
                            tags: dict[str, str] | None = None, dataset: dict[str, Any] | None = None,
                            kind: str = "trial") -> str:
    """The trial's child run; a trial restarted (resume, retry) finds and reuses its own run. A new run gets the
    sweep's provenance tags and the data set as its dataset input. kind: `trial` (the search), or `confirm` (the
    confirmation stage's runs, which no search query sees)."""
    existing = find_trial_run(client, experiment_id, sweep_name, trial_id, kind)
    if existing:
        client.update_run(existing, status="RUNNING")
        return existing
    run = client.create_run(
        experiment_id,
        run_name=trial_name,
        tags={**(tags or {}), "mlflow.parentRunId": parent_run_id, KIND_TAG: kind, SWEEP_TAG: sweep_name,
              TRIAL_TAG: trial_id},
    )
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in flat_params(params).items()])
    if dataset:
        log_dataset_input(client, run.info.run_id, dataset)
    return run.info.run_id


STOPPED_AT_TAG = "afsweep.stopped_at_step"   # where ASHA stopped a pruned trial


def close_trial_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None,
                    step: int | None = None) -> None:
    """status: completed | pruned | failed. ASHA-stopped trials never run their own `finally:` (docs/platform.md#asha).

    A pruned trial ran the budget the scheduler gave it, as designed: its run ends FINISHED (not KILLED, which the
    UI draws like a crash), with `afsweep.status = pruned`, the step it stopped at, and a note that says so. Only a
    real failure is FAILED."""
    mlflow_status = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}[status]
    client.set_tag(run_id, STATUS_TAG, status)
    if status == "pruned":
        if step is not None:
            client.set_tag(run_id, STOPPED_AT_TAG, str(step))
        client.set_tag(run_id, "mlflow.note.content",
                       f"Stopped early by ASHA{f' at step {step}' if step is not None else ''}: its score at a rung "
                       f"was below the rung's cut-off. It finished the budget the scheduler gave it.")
    if reason:
        client.set_tag(run_id, "afsweep.error", reason[:5000])
    client.set_terminated(run_id, status=mlflow_status)


@dataclass
class BestTrial:
    run_id: str
    run_name: str
    sweep: str
    metric: str
    value: float
    step: int | None
    params: dict[str, str]
    model_uri: str | None
    se: float | None = None           # the standard error of the evaluation that scored `value` (its samples)
    role: str = "search"              # search, or base


def sweep_names(client: MlflowClient, experiment_id: str, most: int = 20) -> list[str]:
    """The newest sweeps' names, newest first."""
    runs = client.search_runs([experiment_id], f"tags.`{KIND_TAG}` = 'sweep'", order_by=["attributes.start_time DESC"],
                              max_results=most)
    return [r.data.tags.get(SWEEP_TAG, r.info.run_name) for r in runs]


def latest_sweep(client: MlflowClient, experiment_id: str) -> str | None:
    newest = sweep_names(client, experiment_id, most=1)
    return newest[0] if newest else None


# trials whose best checkpoint may be registered: they ran as designed (to the end, or to an ASHA rung)
REGISTERABLE_STATES = ("completed", "pruned")
# trials never listed as a best: what they logged stays, but it is not a model anyone should use
DISCARDED_STATES = ("failed", "lost")


def is_candidate(run, metric: str, finished_only: bool) -> bool:
    """A run that may be called a best trial: not failed or lost, (with finished_only) ended as designed, with a
    finite score from a trained model (a best at step 0 is the untrained network's score)."""
    state = run.data.tags.get(STATUS_TAG, "running")
    if state in DISCARDED_STATES or (finished_only and state not in REGISTERABLE_STATES):
        return False
    value = run.data.metrics.get(f"{metric}_best")
    step = run.data.metrics.get(f"{metric}_best_step")
    return value is not None and math.isfinite(value) and (step is None or step > 0)


def best_trials(client: MlflowClient, experiment_id: str, metric: str, sweep: str | None, top: int = 1,
                mode: str = "min", finished_only: bool = False) -> list[BestTrial]:
    """The best trials by the summary metric `<metric>_best` (search_runs sorts by the last value logged).
    Failed, lost and untrained trials are never among them; `finished_only` also leaves out running ones."""
    summary = f"{metric}_best"
    order = "ASC" if mode == "min" else "DESC"
    runs = sweep_trial_runs(client, experiment_id, sweep, order_by=[f"metrics.`{summary}` {order}"])
    out = []
    for r in runs:
        if not is_candidate(r, metric, finished_only):
            continue
        out.append(best_trial_of(client, r, metric))
        if len(out) >= top:
            break
    return out


def best_trial_of(client: MlflowClient, run, metric: str) -> BestTrial:
    """A trial run's best `metric` as a BestTrial (its value, step, standard error, role and model)."""
    summary = f"{metric}_best"
    step = run.data.metrics.get(f"{summary}_step")
    return BestTrial(
        run_id=run.info.run_id,
        run_name=run.info.run_name,
        sweep=run.data.tags.get(SWEEP_TAG, ""),
        metric=summary,
        value=run.data.metrics[summary],
        step=int(step) if step is not None else None,
        params=dict(run.data.params),
        model_uri=registered_uri_for_run(client, run.info.run_id, metric),
        se=run.data.metrics.get(f"{summary}_se"),
        role=run.data.tags.get(ROLE_TAG, "search"),
    )


def base_trial(client: MlflowClient, experiment_id: str, sweep: str, metric: str) -> BestTrial | None:
    """The sweep's base trial (search.include_base) with its best `metric`, if it ran and scored after training."""
    runs = client.search_runs([experiment_id], f"tags.`{KIND_TAG}` = 'trial' and tags.`{SWEEP_TAG}` = '{sweep}' "
                              f"and tags.`{ROLE_TAG}` = 'base'", max_results=10)
    scored = [r for r in runs if is_candidate(r, metric, finished_only=False)]
    return best_trial_of(client, scored[0], metric) if scored else None


HEARTBEAT_TAG = "afsweep.driver_seen"  # "<unix time> <interval s>", refreshed by the running driver


def heartbeat_interval() -> float:
    return float(os.environ.get("AFSWEEP_HEARTBEAT_S", "30"))


def sweep_state(parent_run) -> str:
    """The parent run's status; a RUNNING sweep whose driver missed four heartbeats is `INTERRUPTED` (its driver
    died: `afsweep resume` finishes it)."""
    status = parent_run.info.status
    seen = parent_run.data.tags.get(HEARTBEAT_TAG, "").split()
    if status == "RUNNING" and len(seen) == 2 and time.time() - float(seen[0]) > 4 * float(seen[1]):
        return "INTERRUPTED"
    return status


def sweep_status(client: MlflowClient, experiment_id: str, sweep: str | None) -> dict | None:
    """A sweep's trials, states, best so far and cost, from MLflow alone (works while the sweep runs)."""
    parent = find_sweep_run(client, experiment_id, sweep) if sweep else None
    if parent is None:
        return None
    runs = sweep_trial_runs(client, experiment_id, sweep, order_by=["attributes.start_time ASC"])
    trials, counts = [], {}
    for r in runs:
        state = r.data.tags.get(STATUS_TAG, "running")
        counts[state] = counts.get(state, 0) + 1
        m = r.data.metrics
        trials.append({"name": r.info.run_name, "run_id": r.info.run_id, "state": state,
                       "role": r.data.tags.get(ROLE_TAG, "search"), "fid1_best_se": m.get("fid1_best_se"),
                       "step": m.get("fid1_best_step") if "step" not in m else m["step"],
                       "fid1": m.get("fid1"), "fid1_best": m.get("fid1_best"), "fid2_best": m.get("fid2_best"),
                       "wall_s": m.get("wall_s"), "cpu_s": m.get("cpu_s"), "gpu_s": m.get("gpu_s")})
    scored = [t for t in trials if t["fid1_best"] is not None and t["role"] == "search"] or \
        [t for t in trials if t["fid1_best"] is not None]
    best = min(scored, key=lambda t: t["fid1_best"]) if scored else None
    parent_run = client.get_run(parent)
    confirm = None
    if "confirm_trials" in parent_run.data.metrics:   # the confirmation stage started
        runs = sweep_trial_runs(client, experiment_id, sweep, kind="confirm")
        confirm = {"total": int(parent_run.data.metrics["confirm_trials"]),
                   "completed": sum(r.data.tags.get(STATUS_TAG) == "completed" for r in runs),
                   "started": len(runs)}
    return {"sweep": sweep, "state": sweep_state(parent_run), "trials": trials, "counts": counts,
            "stage": parent_run.data.tags.get(STAGE_TAG, "search"), "confirmation": confirm,
            "best": best, "total_wall_s": sum(t["wall_s"] or 0 for t in trials),
            "total_cpu_s": sum(t["cpu_s"] or 0 for t in trials),
            "total_gpu_s": sum(t["gpu_s"] or 0 for t in trials)}


def read_json_artifact(client: MlflowClient, run_id: str, name: str):
    """A small JSON artifact at the top of the run's artifacts, or None if it has none."""
    if name not in [a.path for a in client.list_artifacts(run_id)]:
        return None
    # MLflow draws a download progress bar on stderr for each file: noise under a read command's one answer
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        with open(client.download_artifacts(run_id, name, tmp)) as f:
            return json.load(f)
