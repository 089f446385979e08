"""The MLflow store: its URI, a client that has answered, waiting out an outage, the experiment, the UI's address."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from alphaflow.errors import ExpectedError, InputError, first_line
from alphaflow.retry import retry_transient


class TrackingError(RuntimeError, ExpectedError):
    """MLflow cannot be used; one line naming the URI."""


class NotFoundError(TrackingError, InputError):
    """What the user named is not there: no store at the run dir, no such experiment or sweep (exit 2)."""


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
    patience = outage_patience_s() if patience_s is None else patience_s
    where = uri or "the tracking URI"
    start = time.monotonic()

    def warn(e: Exception) -> None:
        print(f"afsweep: MLflow at {where} unreachable while {what}; retrying for up to {patience:.0f} s: "
              f"{first_line(e)}")

    try:
        return retry_transient(lambda: fn(*args, **kwargs), is_transient=_is_outage, patience_s=patience,
                               first_delay_s=1.0, on_first_retry=warn)
    except Exception as e:
        if not _is_outage(e):
            raise
        raise TrackingError(f"MLflow at {where}: unreachable for {time.monotonic() - start:.0f} s while {what}: "
                            f"{first_line(e)}") from None


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

