"""MLflow: where runs go, the sweep's parent run, one child run per trial, the best model in the registry.

Layout of a sweep in MLflow:
- parent run `<sweep>` (tag afsweep.kind=sweep): the frozen spec as an artifact, sweep-level params and totals;
- child run per trial (tag mlflow.parentRunId, afsweep.kind=trial, afsweep.trial_id): flat params, metrics over
  steps, sample grids, the best EMA checkpoint as artifact `checkpoint/model.pt`;
- the best trial's checkpoint registered as a pyfunc generator with aliases `best-fid1` / `best-fid2`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from alphaflow.errors import InputError, first_line

KIND_TAG = "afsweep.kind"
SWEEP_TAG = "afsweep.sweep"
TRIAL_TAG = "afsweep.trial_id"
STATUS_TAG = "afsweep.status"
CHECKPOINT_ARTIFACT = "checkpoint/model.pt"
MODEL_ARTIFACT = "generator"
MODEL_URI_TAG = "afsweep.model_uri"  # the run's logged generator (models:/m-...), logged once per run


def default_model_name(dataset_id: str) -> str:
    """The registry name of a sweep's generators when its spec names none: afsweep-<data set>."""
    return f"afsweep-{dataset_id.split(':')[0]}"


class TrackingError(RuntimeError):
    """MLflow cannot be used; one line naming the URI."""


class NotFoundError(TrackingError, InputError):
    """What the user named is not there: no store at the run dir, no such experiment or sweep (exit 2)."""


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(explicit: str | None, run_dir: Path) -> str:
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(run_dir)


RUN_DIR_ARTIFACTS = "mlartifacts"  # the artifact root of a run dir's own store, beside its mlflow.db

# the columns of MLflow's SQL store that hold artifact locations (absolute file:// URIs for a local store)
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("model_versions", "source"), ("model_versions", "storage_location"),
                     ("logged_models", "artifact_location"))


def follow_moved_run_dir(uri: str) -> int:
    """A run dir's sqlite store records its artifacts as absolute file:// URIs, so a copied or moved run dir would
    point at the old place and fail to load its own models. When the store sits in a run dir (mlflow.db beside
    mlartifacts/) and its locations name another root, rewrite them to this one. Returns the rows changed.
    MLflow has no API for moving an artifact root; this is the one place that writes its tables directly."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return 0
    db = Path(uri[len("sqlite:///"):])
    here = db.parent / RUN_DIR_ARTIFACTS
    if not (db.is_file() and here.is_dir()):
        return 0
    with sqlite3.connect(db) as con:
        roots = [r[0] for r in con.execute("SELECT artifact_location FROM experiments WHERE artifact_location "
                                           "LIKE ?", (f"file://%/{RUN_DIR_ARTIFACTS}",))]
        old = next((r for r in roots if r != here.resolve().as_uri()), None)
        if old is None:
            return 0
        new = here.resolve().as_uri()
        changed = 0
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in _LOCATION_COLUMNS:
            if table in tables:
                cur = con.execute(f"UPDATE {table} SET {column} = REPLACE({column}, ?, ?) WHERE {column} LIKE ?",
                                  (old, new, f"%{old}%"))
                changed += cur.rowcount
    return changed


def _is_outage(e: Exception) -> bool:
    """A tracking server that is down or failing (connection refused, timeout, 5xx), not a request it refused."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException):
        return e.get_http_status_code() >= 500
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) or "sqlite3.OperationalError" in repr(e)


def outage_patience_s() -> float:
    return float(os.environ.get("AFSWEEP_MLFLOW_OUTAGE_S", "600"))


def through_outages(what: str, fn, *args, uri: str = "", patience_s: float | None = None, **kwargs):
    """fn(*args) retried while MLflow is unreachable, for up to `patience_s` (AFSWEEP_MLFLOW_OUTAGE_S, 10 min).

    The choice for a tracking outage mid-trial: the trial waits and retries rather than fail. Training is what
    costs; a restarted server should cost a pause, not the trial. Nothing is buffered in memory, so nothing can be
    lost silently: the step that logs waits until its metrics are stored. A longer outage fails the trial with one
    line; its checkpoint and everything logged before it stay.
    """
    import time

    patience = outage_patience_s() if patience_s is None else patience_s
    start, delay, warned = time.monotonic(), 1.0, False
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            waited = time.monotonic() - start
            if not _is_outage(e) or waited >= patience:
                if _is_outage(e):
                    raise TrackingError(f"MLflow at {uri or 'the tracking URI'}: unreachable for {waited:.0f} s "
                                        f"while {what}: {first_line(e)}") from None
                raise
            if not warned:
                print(f"afsweep: MLflow at {uri or 'the tracking URI'} unreachable while {what}; retrying for up "
                      f"to {patience:.0f} s: {first_line(e)}")
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def client_for(uri: str, existing: bool = False) -> MlflowClient:
    """A client that has answered once: an unreachable server or a broken store is one TrackingError line.
    existing: the read-only commands' way in; a local store that is not there is a NotFoundError, and nothing is
    created (MLflow would otherwise create the file and its tables on first touch)."""
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if existing and db is not None and not db.is_file():
        where = "no run dir" if not db.parent.is_dir() else "no MLflow store"
        raise NotFoundError(f"{db.parent}: {where} there (no {db.name}; pass --run-dir DIR or --tracking-uri URI "
                            f"of an afsweep launch)")
    follow_moved_run_dir(uri)
    # keep a dead server from stalling for minutes in MLflow's retry loop
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as e:  # MlflowException, requests errors, sqlalchemy errors
        raise TrackingError(f"MLflow at {uri} is not usable: {first_line(e)}") from None
    return client


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created if needed. `artifact_root` is used only for a local (sqlite) store: a tracking
    server decides where artifacts go (its proxied artifact store), and a local path would be wrong for remote
    workers."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        local_store = client.tracking_uri.startswith(("sqlite:", "file:", "/"))
        location = Path(artifact_root).resolve().as_uri() if artifact_root and local_store else None
        exp = client.get_experiment(client.create_experiment(name, artifact_location=location))
    if EXPERIMENT_KIND_TAG not in exp.tags:  # an experiment the user already set to another kind is left alone
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return exp.experiment_id


# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and an empty guess lands on the GenAI
# overview (traces, tokens). The experiment's runs view with workflowType=machine_learning is the training view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"


def ui_url(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI page of the experiment's training runs: the server's own, or `mlflow ui`'s default port."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
                     order_by: list[str] | None = None):
    """Every child run of one sweep, or (sweep None) of every sweep of the experiment; deleted runs excluded."""
    filt = f"tags.`{KIND_TAG}` = 'trial'" + (f" and tags.`{SWEEP_TAG}` = '{sweep}'" if sweep else "")
    return client.search_runs([experiment_id], filt, order_by=order_by, max_results=10_000)


def find_trial_run(client: MlflowClient, experiment_id: str, sweep_name: str, trial_id: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        f"tags.`{KIND_TAG}` = 'trial' and tags.`{SWEEP_TAG}` = '{sweep_name}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def get_or_create_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, sweep_name: str,
                            trial_id: str, trial_name: str, params: dict[str, Any],
                            tags: dict[str, str] | None = None, dataset: dict[str, Any] | None = None) -> str:
    """The trial's child run; a trial restarted (resume, retry) finds and reuses its own run. A new run gets the
    sweep's provenance tags and the data set as its dataset input."""
    existing = find_trial_run(client, experiment_id, sweep_name, trial_id)
    if existing:
        client.update_run(existing, status="RUNNING")
        return existing
    run = client.create_run(
        experiment_id,
        run_name=trial_name,
        tags={**(tags or {}), "mlflow.parentRunId": parent_run_id, KIND_TAG: "trial", SWEEP_TAG: sweep_name,
              TRIAL_TAG: trial_id},
    )
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in flat_params(params).items()])
    if dataset:
        from orchestrator.tracking.provenance import log_dataset_input

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
EXTRACTOR_PARAM = "eval.extractor"
EVAL_N_PARAM = "eval.samples"


def is_candidate(run, metric: str, finished_only: bool) -> bool:
    """A run that may be called a best trial: not failed or lost, (with finished_only) ended as designed, with a
    finite score from a trained model (a best at step 0 is the untrained network's score)."""
    import math

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
        step = r.data.metrics.get(f"{summary}_step", r.data.metrics.get(f"{metric}_best_step"))
        out.append(BestTrial(
            run_id=r.info.run_id,
            run_name=r.info.run_name,
            sweep=r.data.tags.get(SWEEP_TAG, ""),
            metric=summary,
            value=r.data.metrics[summary],
            step=int(step) if step is not None else None,
            params=dict(r.data.params),
            model_uri=registered_uri_for_run(client, r.info.run_id, metric),
        ))
        if len(out) >= top:
            break
    return out


HEARTBEAT_TAG = "afsweep.driver_seen"  # "<unix time> <interval s>", refreshed by the running driver


def heartbeat_interval() -> float:
    return float(os.environ.get("AFSWEEP_HEARTBEAT_S", "30"))


def sweep_state(parent_run) -> str:
    """The parent run's status; a RUNNING sweep whose driver missed four heartbeats is `INTERRUPTED` (its driver
    died: `afsweep resume` finishes it)."""
    import time

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
                       "step": m.get("fid1_best_step") if "step" not in m else m["step"],
                       "fid1": m.get("fid1"), "fid1_best": m.get("fid1_best"), "fid2_best": m.get("fid2_best"),
                       "wall_s": m.get("wall_s"), "cpu_s": m.get("cpu_s"), "gpu_s": m.get("gpu_s")})
    scored = [t for t in trials if t["fid1_best"] is not None]
    best = min(scored, key=lambda t: t["fid1_best"]) if scored else None
    return {"sweep": sweep, "state": sweep_state(client.get_run(parent)), "trials": trials, "counts": counts,
            "best": best, "total_wall_s": sum(t["wall_s"] or 0 for t in trials),
            "total_cpu_s": sum(t["cpu_s"] or 0 for t in trials),
            "total_gpu_s": sum(t["gpu_s"] or 0 for t in trials)}


def registered_uri_for_run(client: MlflowClient, run_id: str, metric: str | None = None) -> str | None:
    """The registry URI of the run's model: by its alias (`best-<metric>` first), else by version; else the run's
    logged model; None if it has neither."""
    try:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
    except Exception:
        return None
    if not versions:
        return client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
    v = max(versions, key=lambda mv: int(mv.version))
    # search results leave aliases out: ask for the version itself
    aliases = list(client.get_model_version(v.name, v.version).aliases or [])
    preferred = f"best-{metric}" if metric else None
    if preferred in aliases:
        return f"models:/{v.name}@{preferred}"
    return f"models:/{v.name}@{sorted(aliases)[0]}" if aliases else f"models:/{v.name}/{v.version}"


def register_generator(client: MlflowClient, tracking_uri: str, run_id: str, model_name: str,
                       aliases: list[str]) -> str:
    """Log the trial's best checkpoint as a pyfunc generator (once per run) and point the aliases at it (what the
    user asked for: no comparison with the current holders; the sweep's own registration is `promote_best`)."""
    version = register_version(client, tracking_uri, run_id, model_name)
    for alias in aliases:
        client.set_registered_model_alias(model_name, alias, version)
    return f"models:/{model_name}@{aliases[0]}" if aliases else f"models:/{model_name}/{version}"


def register_version(client: MlflowClient, tracking_uri: str, run_id: str, model_name: str) -> str:
    """The registry version of the run's generator, created (model logged into the run) if it has none."""
    from orchestrator.tracking.generator_model import global_tracking_uri, log_generator_model

    with global_tracking_uri(tracking_uri):
        model_uri = client.get_run(run_id).data.tags.get(MODEL_URI_TAG)
        if not model_uri:
            local = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT)
            model_uri = log_generator_model(tracking_uri, run_id, local, MODEL_ARTIFACT)
            client.set_tag(run_id, MODEL_URI_TAG, model_uri)
        existing = client.search_model_versions(f"run_id = '{run_id}' and name = '{model_name}'")
        if existing:
            return max(existing, key=lambda mv: int(mv.version)).version
        try:
            client.get_registered_model(model_name)
        except Exception:
            client.create_registered_model(model_name, description="afsweep generators (1- and 2-NFE)")
        model_id = model_uri.split("/", 1)[1] if model_uri.startswith("models:/m-") else None
        return client.create_model_version(model_name, source=model_uri, run_id=run_id, model_id=model_id).version


@dataclass
class Promotion:
    """What `promote_best` did with one alias."""
    alias: str
    version: str              # the sweep's best, registered
    moved: bool               # the alias now points at it
    reason: str               # why it moved or stayed
    uri: str                  # models:/NAME@ALIAS if moved, else models:/NAME/VERSION


def score_of(client: MlflowClient, run_id: str, metric: str) -> tuple[float | None, str | None, str | None]:
    """A run's best score and what it was measured with (feature extractor, number of samples)."""
    run = client.get_run(run_id)
    return (run.data.metrics.get(f"{metric}_best"), run.data.params.get(EXTRACTOR_PARAM),
            run.data.params.get(EVAL_N_PARAM))


def promote_best(client: MlflowClient, tracking_uri: str, run_id: str, model_name: str, metric: str,
                 policy: str = "if_better", mode: str = "min") -> Promotion:
    """Register the sweep's best trial and move `best-<metric>` to it only when it beats the current holder on the
    same extractor and N (policy if_better), or always (policy always). An alias never moves to a worse model, or
    to one scored another way, without being asked."""
    alias = f"best-{metric}"
    version = register_version(client, tracking_uri, run_id, model_name)
    value, extractor, n = score_of(client, run_id, metric)
    try:
        holder = client.get_model_version_by_alias(model_name, alias)
    except Exception:  # no such alias yet (MLflow raises RESOURCE_DOES_NOT_EXIST)
        holder = None
    moved, reason = True, "first holder"
    if holder is not None and str(holder.version) == str(version):
        reason = "already the holder"
    elif holder is not None and policy != "always":
        h_value, h_extractor, h_n = score_of(client, holder.run_id, metric) if holder.run_id else (None, None, None)
        if h_value is None or (h_extractor, h_n) != (extractor, n):
            moved = False
            reason = (f"version {holder.version} holds it, scored with {h_extractor or '?'} at N={h_n or '?'}; this "
                      f"sweep's best is scored with {extractor} at N={n}: not comparable")
        elif (value < h_value) if mode == "min" else (value > h_value):
            reason = f"{metric} {value:.3f} beats version {holder.version}'s {h_value:.3f}"
        else:
            moved = False
            reason = f"version {holder.version}'s {metric} {h_value:.3f} is not beaten by {value:.3f}"
    elif holder is not None:
        reason = "policy always"
    if moved:
        client.set_registered_model_alias(model_name, alias, version)
    uri = f"models:/{model_name}@{alias}" if moved else f"models:/{model_name}/{version}"
    return Promotion(alias=alias, version=str(version), moved=moved, reason=reason, uri=uri)
