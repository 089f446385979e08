"""MLflow: where runs go, the sweep's parent run, one child run per trial, the best model in the registry.

Layout of a sweep in MLflow:
- parent run `<sweep>` (tag afsweep.kind=sweep): the frozen spec as an artifact, sweep-level params and totals;
- child run per trial (tag mlflow.parentRunId, afsweep.kind=trial, afsweep.trial_id): flat params, metrics over
  steps, sample grids, the best EMA checkpoint as artifact `checkpoint/model.pt`;
- the best trial's checkpoint registered as a pyfunc generator with aliases `best-fid1` / `best-fid2`.

`store` (the client, the URI, outages), `runs` (the sweep's runs and their states), `registry` (models and
aliases), `provenance` (tags, dataset inputs), `generator_model` / `generator_pyfunc` (the logged model).
"""

from mlflow.tracking import MlflowClient

from orchestrator.platform.places import default_tracking_uri, resolve_tracking_uri
from orchestrator.tracking.registry import (
                                            CHECKPOINT_ARTIFACT,
                                            EVAL_N_PARAM,
                                            EXTRACTOR_PARAM,
                                            MODEL_ARTIFACT,
                                            MODEL_URI_TAG,
                                            Promotion,
                                            default_model_name,
                                            promote_best,
                                            promote_confirmed,
                                            register_generator,
                                            register_version,
                                            registered_model_of,
                                            registered_uri_for_run,
                                            score_of,
)
from orchestrator.tracking.runs import (
                                            CONFIRMATION_ARTIFACT,
                                            CONFIRMS_TAG,
                                            DISCARDED_STATES,
                                            HEARTBEAT_TAG,
                                            KIND_TAG,
                                            REGISTERABLE_STATES,
                                            ROLE_TAG,
                                            SEED_TAG,
                                            STAGE_TAG,
                                            STATUS_TAG,
                                            STOPPED_AT_TAG,
                                            SWEEP_TAG,
                                            TRIAL_TAG,
                                            BestTrial,
                                            base_trial,
                                            best_trial_of,
                                            best_trials,
                                            close_trial_run,
                                            find_sweep_run,
                                            find_trial_run,
                                            flat_params,
                                            get_or_create_trial_run,
                                            heartbeat_interval,
                                            is_candidate,
                                            latest_sweep,
                                            param_value,
                                            read_json_artifact,
                                            start_sweep_run,
                                            sweep_names,
                                            sweep_state,
                                            sweep_status,
                                            sweep_trial_runs,
)
from orchestrator.tracking.store import (
                                            EXPERIMENT_KIND_TAG,
                                            RUN_DIR_ARTIFACTS,
                                            TRAINING_KIND,
                                            NotFoundError,
                                            TrackingError,
                                            client_for,
                                            ensure_experiment,
                                            follow_moved_run_dir,
                                            outage_patience_s,
                                            through_outages,
                                            ui_url,
)

__all__ = [
    "BestTrial", "CHECKPOINT_ARTIFACT", "CONFIRMATION_ARTIFACT", "CONFIRMS_TAG", "DISCARDED_STATES", "EVAL_N_PARAM",
    "EXPERIMENT_KIND_TAG", "EXTRACTOR_PARAM", "HEARTBEAT_TAG", "KIND_TAG", "MODEL_ARTIFACT", "MODEL_URI_TAG",
    "MlflowClient", "NotFoundError", "Promotion", "REGISTERABLE_STATES", "ROLE_TAG", "RUN_DIR_ARTIFACTS",
    "SEED_TAG", "STAGE_TAG", "STATUS_TAG", "STOPPED_AT_TAG", "SWEEP_TAG", "TRAINING_KIND", "TRIAL_TAG",
    "TrackingError", "base_trial", "best_trial_of", "best_trials", "client_for", "close_trial_run",
    "default_model_name", "default_tracking_uri", "ensure_experiment", "find_sweep_run", "find_trial_run",
    "flat_params", "follow_moved_run_dir", "get_or_create_trial_run", "heartbeat_interval", "is_candidate",
    "latest_sweep", "outage_patience_s", "param_value", "promote_best", "promote_confirmed", "read_json_artifact",
    "register_generator", "register_version", "registered_model_of", "registered_uri_for_run",
    "resolve_tracking_uri", "score_of", "start_sweep_run", "sweep_names", "sweep_state", "sweep_status",
    "sweep_trial_runs", "through_outages", "ui_url",
]
