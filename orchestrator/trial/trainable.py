"""One Tune trial: a function trainable that runs a Ray Train TorchTrainer (the Train V2 pattern,
docs/platform.md#function-trainables), and the Tune callback that closes each trial's MLflow run whatever way it ended.
"""

from __future__ import annotations

import time
from typing import Any

import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from alphaflow.config import dotted_keys, flatten
from orchestrator import tracking
from orchestrator.platform.places import storage_filesystem
from orchestrator.platform.ray_adapter import trainer_class
from orchestrator.spec import SweepSpec
from orchestrator.spec.trial_config import (
    BASE_ROLE,
    CONFIRM_KEY,
    CONFIRM_ROLE,
    ROLE_KEY,
    SEARCH_ROLE,
    SweepContext,
    build_trial_config,
    trial_number,
)
from orchestrator.trial.worker import DIVERGED_KEY, train_loop

SETTINGS_KEY = "afsweep"  # the trial config's static part; every other key is a searched method parameter
DIVERGED_TAG = "afsweep.error"  # where the worker records the non-finite loss line


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The searched parameters of a trial, flat keys (Tune may have nested a dotted key on '/'); a confirmation
    trial's are those of the configuration it confirms, with its fresh seed."""
    if CONFIRM_KEY in config:
        return {**config[CONFIRM_KEY]["params"], "seed": config[CONFIRM_KEY]["seed"]}
    if config.get(ROLE_KEY) == BASE_ROLE:   # its config shows the base values (Tune's table), nothing searched
        return {}
    return dotted_keys({k: v for k, v in config.items() if k not in (SETTINGS_KEY, ROLE_KEY)}, sep="/")


def trial_dirname(trial) -> str:
    """A trial's folder in the Tune storage: its id and what was searched for it, e.g.
    `trial_3f2a1b0c_alpha.k_s=0.1646,optim.lr=0.001978` (Tune's default names it from the first keys of the whole
    config, which are the same for every trial)."""
    searched = ",".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in trial_params(trial.config).items())
    if trial.config.get(ROLE_KEY) == BASE_ROLE:
        return f"trial_{trial.trial_id}_base"
    if CONFIRM_KEY in trial.config:
        c = trial.config[CONFIRM_KEY]
        return f"trial_{trial.trial_id}_confirm-{c['of']}-seed{c['seed']}"
    name = f"trial_{trial.trial_id}" + (f"_{searched}" if searched else "")
    return "".join(ch if ch.isalnum() or ch in "._=,-" else "-" for ch in name)[:150]


def run_trial(config: dict[str, Any]) -> None:
    settings = config[SETTINGS_KEY]
    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    params = trial_params(config)
    spec = SweepSpec.model_validate(settings["spec"])
    sweep = SweepContext.model_validate(settings["sweep"])
    confirm = config.get(CONFIRM_KEY)
    role = CONFIRM_ROLE if confirm else config.get(ROLE_KEY, SEARCH_ROLE)
    # a confirmation trial's seed is its own (in params): no per-trial offset
    trial = build_trial_config(spec, params, sweep, trial_number=None if confirm else trial_number(trial_id),
                               role=role)
    tags = {**sweep.run_tags, tracking.ROLE_TAG: role}
    if confirm:
        trial.rescore_samples = spec.search.confirm.eval_samples or spec.train.eval_samples
        tags.update({tracking.CONFIRMS_TAG: confirm["of"], tracking.SEED_TAG: str(confirm["seed"])})
        trial_name = f"confirm-{confirm['name']}-seed{confirm['seed']}"

    client = tracking.MlflowClient(tracking_uri=sweep.tracking_uri)
    trial.run_id = tracking.through_outages(
        "opening the trial's run", tracking.get_or_create_trial_run,
        client, sweep.experiment_id, sweep.parent_run_id, sweep.sweep_name, trial_id, trial_name,
        params={**flatten(trial.method), "preset": trial.preset, "swept": ",".join(sorted(params)),
                **({"method": trial.method_name} if trial.method_name is not None else {}),
                tracking.EXTRACTOR_PARAM: sweep.extractor, tracking.EVAL_N_PARAM: trial.train.eval_samples},
        tags=tags, dataset=sweep.dataset, kind=run_kind(config), uri=sweep.tracking_uri)
    diverged = tracking.through_outages("reading the trial's run", client.get_run, trial.run_id,
                                        uri=sweep.tracking_uri).data.tags.get(DIVERGED_TAG, "")
    if diverged.startswith("non-finite loss"):  # a restart (Tune's, or resume) of a trial that diverged
        raise TrialDivergedError(diverged)
    run = trial.train
    train_fs, train_path = storage_filesystem(sweep.train_storage)
    trainer = trainer_class()(
        train_loop,
        train_loop_config={"trial": trial},  # pickled as itself to every worker
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.workers, use_gpu=run.use_gpu, resources_per_worker={"CPU": run.cpus_per_worker},
            placement_strategy=run.placement,
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",  # deterministic: a resumed trial finds its own Train run
            storage_path=train_path,
            storage_filesystem=train_fs,
            callbacks=[TuneReportCallback()],
            # a lost worker (process or node) restarts the group from the latest checkpoint on what remains
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
            # a resumed trial needs only the latest; the best EMA weights are in MLflow already
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # Train's per-report INFO lines would bury the trial table; its log files keep them (the dashboard)
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    diverged = (result.metrics or {}).get(DIVERGED_KEY)
    if diverged:  # the trial ends in error, once (Ray Train did not retry it)
        raise TrialDivergedError(diverged)


def run_kind(config: dict[str, Any]) -> str:
    """The MLflow run kind of a trial: `confirm` for the confirmation stage (no search query sees those), else
    `trial`."""
    return "confirm" if CONFIRM_KEY in config else "trial"


class TrialDivergedError(RuntimeError):
    """The trial's loss went non-finite: the message is the worker's one line."""


class MlflowTrialCloser(tune.Callback):
    """Ends each trial's child run as completed, pruned (stopped early by ASHA) or failed.

    The trial function cannot do this itself: a trial stopped by the scheduler is killed without running its
    `finally:` blocks (docs/platform.md#asha).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_name: str):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.sweep_name = sweep_name

    def _close(self, trial, status: str, reason: str | None = None, step: int | None = None) -> None:
        def close() -> None:
            client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
            run_id = tracking.find_trial_run(client, self.experiment_id, self.sweep_name, trial.trial_id,
                                             run_kind(trial.config))
            if run_id:
                final = status
                if status == "pruned" and ran_to_its_end(client.get_run(run_id)):
                    final, step_ = "completed", None   # Tune's last result predates a restore that finished it
                else:
                    step_ = step
                tracking.close_trial_run(client, run_id, final, reason, step_)

        try:  # a tracking server that is down for a while: wait for it, else the run would stay RUNNING
            tracking.through_outages(f"closing trial {trial.trial_id}", close, uri=self.tracking_uri)
        except Exception as e:  # never let bookkeeping kill the sweep
            print(f"afsweep: could not close the MLflow run of trial {trial.trial_id}: {e}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        # a last result that predates a restore which finished the trial is corrected in _close (ran_to_its_end)
        stopped_early = last.get("step") is not None and last.get("step", 0) < last.get("total_steps", 0)
        self._close(trial, "pruned" if stopped_early else "completed", step=last.get("step"))

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = None
        if getattr(trial, "error_file", None):
            try:
                with open(trial.error_file) as f:
                    reason = _last_error_line(f.read())
            except OSError:
                pass
        self._close(trial, "failed", reason)


def ran_to_its_end(run) -> bool:
    """The run logged its last step: a trial restored at its final checkpoint reports nothing new to Tune, whose
    last result for it is then older than the end it reached."""
    logged, total = run.data.metrics.get("step"), run.data.params.get("total_steps")
    return logged is not None and total is not None and logged >= float(total)


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln
    return lines[-1] if lines else "unknown error"


class DriverHeartbeat(tune.Callback):
    """Refreshes the parent run's heartbeat tag while the driver runs, so `afsweep status` can tell a running sweep
    from one whose driver died (its MLflow status stays RUNNING until `afsweep resume`)."""

    def __init__(self, tracking_uri: str, parent_run_id: str):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self._last = 0.0

    def beat(self) -> None:
        interval = tracking.heartbeat_interval()
        if time.time() - self._last < interval:
            return
        self._last = time.time()
        try:
            tracking.client_for(self.tracking_uri).set_tag(self.parent_run_id, tracking.HEARTBEAT_TAG,
                                                           f"{self._last:.0f} {interval:g}")
        except Exception as e:  # a tracking outage must not stop the sweep; the next beat tries again
            print(f"afsweep: heartbeat not recorded: {e}")

    def setup(self, **info):
        self.beat()

    def on_step_end(self, iteration, trials, **info):
        self.beat()
