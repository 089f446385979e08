"""The sweep driver: spec -> checked inputs -> Ray -> MLflow parent run -> Tune (Optuna + ASHA) -> best model
registered. `launch` reads as its steps; each step is a function here or a module of this package."""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

import yaml
from ray import tune
from ray.tune import CLIReporter

from alphaflow.data import DataError, Manifest, prepare_builtin, read_manifest
from alphaflow.data.preflight import ShardCheckError, check_shards
from orchestrator import tracking
from orchestrator.platform.places import (
    SweepPlaces,
    check_optuna_storage,
    check_storage,
    hide_secret,
    read_text,
    refuse_local_parts_on_a_cluster,
    resolve_places,
    storage_filesystem,
    write_text,
)
from orchestrator.spec import SweepContext, SweepSpec, domain_extractor, method_config, parse_spec
from orchestrator.spec.objectives import format_objectives, search_objectives
from orchestrator.spec.search_space import grid_of
from orchestrator.sweep.bounds import grace_period, max_total_steps
from orchestrator.sweep.confirm import confirm_stage
from orchestrator.sweep.errors import SweepError, SweepInputError
from orchestrator.sweep.finish import SweepOutcome, finish, reconcile_lost_trials, registered_model_name
from orchestrator.sweep.ray_cluster import dashboard_line, shutdown_ray, start_ray
from orchestrator.sweep.search import make_scheduler, make_searcher, tune_metric
from orchestrator.sweep.warm_start import WarmStart, read_warm_start
from orchestrator.tracking.provenance import log_dataset_input, manifest_dataset, source_tags
from orchestrator.trial.trainable import SETTINGS_KEY, DriverHeartbeat, MlflowTrialCloser, run_trial, trial_dirname

DEFAULT_RUN_DIR = Path("afsweep-runs")


def launch(spec: SweepSpec, spec_text: str, run_dir: Path = DEFAULT_RUN_DIR, address: str | None = None,
           echo=print, sweep_name: str | None = None) -> SweepOutcome:
    """Run one sweep. Every input is checked before Ray starts or anything is written to MLflow."""
    t0 = time.time()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    places = resolve_places(run_dir, spec.run.storage, spec.search.storage, spec.tracking.uri)
    base = method_config(spec, {})  # the base config, before any searched value
    manifest_url, manifest, client = check_inputs(spec, places, echo)
    warm = read_warm_start(client, spec, places.tracking_uri)  # before this sweep's run: `latest` is the last one
    dashboard_url = start_ray(spec, address, echo)
    if address or spec.ray.address:
        refuse_local_parts_on_a_cluster(places, manifest_url, spec.ray.shared_filesystem)
    grace = grace_period(spec, echo)
    sweep_name = sweep_name or f"{spec.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    sweep = open_sweep_run(client, spec, spec_text, places, manifest_url, manifest, warm, sweep_name, grace,
                           base.total_steps)
    echo_plan(spec, sweep, places, warm, dashboard_url, grace, base.total_steps, echo)
    tuner = make_tuner(spec, sweep, places, warm, grace)
    write_text(places.spec_copy(sweep_name), frozen_spec(spec))  # what `afsweep resume` rebuilds the sweep from
    grid = _fit(tuner, client, sweep.parent_run_id, end_run=spec.search.confirm is None)
    outcome = finish(client, spec, sweep_name, sweep.parent_run_id, places.tracking_uri, sweep.experiment_id, grid,
                     manifest, t0)
    if spec.search.confirm is not None and outcome.completed:
        outcome.confirmation = _confirm(client, spec, sweep, places, grid, echo)
    outcome.dashboard_url = dashboard_url
    shutdown_ray()
    return outcome


def _confirm(client, spec: SweepSpec, sweep: SweepContext, places: SweepPlaces, grid, echo, resuming=False):
    """The confirmation stage (sweep.confirm); the parent run ends with it (FAILED or KILLED if it does not end)."""
    status = "FAILED"
    try:
        result = confirm_stage(client, spec, sweep, places, grid, echo, resuming)
        status = "FINISHED"
        return result
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(sweep.parent_run_id, status=status)


def check_inputs(spec: SweepSpec, places: SweepPlaces, echo) -> tuple[str, Manifest, tracking.MlflowClient]:
    """(manifest URL, manifest, MLflow client): the data (prepared on first use), the storage, the Optuna database
    and MLflow, each checked; bad data fails first, before anything is written to MLflow."""
    manifest_url = ensure_data(spec, places.run_dir, echo)
    check_storage(places.storage)
    check_optuna_storage(places.optuna_url)
    client = tracking.client_for(places.tracking_uri)
    manifest = read_manifest(manifest_url)
    if not manifest.fid_reference:
        raise SweepError(f"{manifest_url}: no FID reference statistics recorded (re-run afsweep data prepare)")
    return manifest_url, manifest, client


def ensure_data(spec: SweepSpec, run_dir: Path, echo=print) -> str:
    """The manifest URL; a built-in data set is prepared on first use under <run_dir>/data/<name>."""
    if spec.data.manifest:
        url = spec.data.manifest
    else:
        out = (run_dir / "data" / spec.data.dataset).resolve()
        url = str(out / "manifest.parquet")
        if not Path(url).exists():
            echo(f"afsweep: preparing {spec.data.dataset} into {out} (first use; later sweeps reuse it)")
            url = prepare_builtin(spec.data.dataset, str(out))
    try:
        manifest = read_manifest(url)
        n = check_shards(manifest, spec.data.verify)
    except ShardCheckError as e:
        raise SweepInputError(f"{e} (checked before any trial started)") from None
    except DataError as e:
        raise SweepError(str(e)) from None
    echo(f"afsweep: {n} shards of {url} checked ({'size and sha256' if spec.data.verify == 'sha256' else 'size'})")
    return url


def frozen_spec(spec: SweepSpec) -> str:
    """The validated spec as YAML: what the parent run and the sweep's storage keep."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def open_sweep_run(client, spec: SweepSpec, spec_text: str, places: SweepPlaces, manifest_url: str,
                   manifest: Manifest, warm: WarmStart | None, sweep_name: str, grace: int,
                   base_steps: int) -> SweepContext:
    """The sweep's MLflow parent run (params, the spec as given and as frozen, provenance tags, the dataset input),
    and what every trial needs to know of the sweep."""
    experiment_id = tracking.ensure_experiment(client, spec.tracking.experiment, places.run_dir / "mlartifacts")
    parent_run_id = tracking.start_sweep_run(
        client, experiment_id, sweep_name, frozen_spec(spec),
        params={"spec_name": spec.name, "num_trials": spec.search.num_trials, "algorithm": spec.search.algorithm,
                "workers_per_trial": spec.train.workers, "total_steps": base_steps, "grace_period": grace,
                "manifest": manifest_url, "dataset": manifest.dataset_id,
                "registered_model": registered_model_name(spec, manifest),
                "swept": ",".join(spec.search.space), "storage": places.storage,
                "optuna_storage": hide_secret(places.optuna_url),
                "objectives": format_objectives(search_objectives(spec.search)),
                **({"warm_start": warm.sweep, "warm_start_trials": len(warm.history)} if warm else {})},
    )
    client.log_text(parent_run_id, spec_text, "spec_source.yaml")
    run_tags = source_tags()
    for key, value in run_tags.items():
        client.set_tag(parent_run_id, key, value)
    dataset = manifest_dataset(manifest)
    log_dataset_input(client, parent_run_id, dataset)
    return SweepContext(sweep_name=sweep_name, parent_run_id=parent_run_id, experiment_id=experiment_id,
                        tracking_uri=places.tracking_uri, manifest=manifest_url,
                        extractor=domain_extractor(manifest.dataset_id),
                        train_storage=places.train_storage(sweep_name), run_tags=run_tags, dataset=dataset)


def echo_plan(spec: SweepSpec, sweep: SweepContext, places: SweepPlaces, warm: WarmStart | None,
              dashboard_url: str | None, grace: int, base_steps: int, echo) -> None:
    """What the sweep will do and where to watch it."""
    echo(f"afsweep: sweep {sweep.sweep_name}: {spec.search.num_trials} trials x {spec.train.workers} workers, "
         f"{_steps_line(spec, base_steps)}, {_stopping_line(spec, grace)}")
    echo(f"afsweep: MLflow parent run {sweep.parent_run_id} in experiment '{spec.tracking.experiment}' at "
         f"{hide_secret(sweep.tracking_uri)}")
    echo(f"afsweep: sweep state and checkpoints in {places.sweep_dir(sweep.sweep_name)}, Optuna study in "
         f"{hide_secret(places.optuna_url)}")
    if spec.search.include_base:
        echo("afsweep: the first trial runs the base setting (preset + base.overrides, no searched value) to its "
             "end: the reference the best is measured against (search.include_base: false leaves it out)")
    if warm:
        echo(warm.line())
    echo(ui_line(sweep.tracking_uri, sweep.experiment_id))
    if dashboard_url:
        echo(dashboard_line(dashboard_url))


def make_tuner(spec: SweepSpec, sweep: SweepContext, places: SweepPlaces, warm: WarmStart | None,
               grace: int) -> tune.Tuner:
    """Tune over the trial function: the Optuna searcher, the scheduler, MLflow's closer and the heartbeat."""
    settings = {"spec": spec, "sweep": sweep}  # pickled as themselves into every trial
    storage_fs, storage_path = storage_filesystem(places.storage)
    return tune.Tuner(
        tune.with_resources(run_trial, {"cpu": 1}),
        param_space={SETTINGS_KEY: settings},
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec, study_name=sweep.sweep_name, storage_url=places.optuna_url, warm=warm),
            scheduler=make_scheduler(spec, max_total_steps(spec), grace),
            num_samples=spec.search.num_trials,
            max_concurrent_trials=spec.search.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=sweep.sweep_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            callbacks=[MlflowTrialCloser(sweep.tracking_uri, sweep.experiment_id, sweep.sweep_name),
                       DriverHeartbeat(sweep.tracking_uri, sweep.parent_run_id)],
            progress_reporter=_reporter(spec),
            # the trial's own process lost with its node: the trial restarts (same id, same Optuna trial, same
            # MLflow run) and its Train run resumes from the latest checkpoint in the storage
            failure_config=tune.FailureConfig(max_failures=spec.train.max_failures),
            verbose=1,
        ),
    )


def ui_line(tracking_uri: str, experiment_id: str) -> str:
    """Where to look at the runs in MLflow's UI: the training runs view, not MLflow 3's GenAI overview."""
    url = hide_secret(tracking.ui_url(tracking_uri, experiment_id))
    if tracking_uri.startswith(("http://", "https://")):
        return f"afsweep: MLflow UI (training runs): {url}"
    return f"afsweep: MLflow UI: mlflow ui --backend-store-uri {tracking_uri}, then {url}"


def _steps_line(spec: SweepSpec, base_steps: int) -> str:
    """`1000 steps each`, or the range when the trial length is searched (`100-800 steps (searched)`)."""
    searched = spec.search.space.get("total_steps")
    if searched is None:
        return f"{base_steps} steps each"
    values = [int(v) for v in searched.extremes().values()]
    return f"{min(values)}-{max(values)} steps (searched)"


def _stopping_line(spec: SweepSpec, grace: int) -> str:
    s = spec.search
    if s.objectives:
        return f"objectives {format_objectives(s.objectives)}, every trial to its end (no ASHA)"
    if s.algorithm == "grid":
        return f"a grid over {', '.join(grid_of(s.space)) or 'nothing'}, every combination once, to its end"
    if s.early_stopping.scheduler == "none":
        return "every trial to its end (no early stopping)"
    return f"ASHA rungs from step {grace}"


def _reporter(spec: SweepSpec):
    cols = {"step": "step", "loss_unweighted": "mse", "fid1": "fid1", "fid1_se": "fid1 se", "fid2": "fid2",
            "fid1_best": "fid1*"}
    params = {k: k for k in list(spec.search.space)[:6]}
    return CLIReporter(metric_columns=cols, parameter_columns=params, max_report_frequency=30,
                       sort_by_metric=True, metric=tune_metric(spec), mode=spec.search.mode)


def _fit(tuner, client, parent_run_id: str, end_run: bool = True):
    """Run Tune; the parent run ends FINISHED (unless a confirmation stage follows: `end_run` False), or KILLED on
    Ctrl-C, or FAILED (trials keep what they logged)."""
    status = "FAILED"
    try:
        grid = tuner.fit()
        status = "FINISHED"
        return grid
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if end_run or status != "FINISHED":
            client.set_terminated(parent_run_id, status=status)


def resume(sweep_name: str, run_dir: Path = DEFAULT_RUN_DIR, address: str | None = None, echo=print,
           tracking_uri: str | None = None, storage: str | None = None, optuna_storage: str | None = None
           ) -> SweepOutcome:
    """Finish a sweep whose driver died: Tune restores its trials and the Optuna searcher; trials find their own
    Train runs (deterministic names) and MLflow child runs (tagged by trial id), so nothing runs or logs twice.
    From another machine: the same storage (where the frozen spec is), and the spec's or the given URLs."""
    t0 = time.time()
    run_dir = Path(run_dir).resolve()
    where = resolve_places(run_dir, storage, None, None)
    text = read_text(where.spec_copy(sweep_name))
    fs, sweep_path = storage_filesystem(where.sweep_dir(sweep_name))
    if text is None or not tune.Tuner.can_restore(sweep_path, storage_filesystem=fs):
        raise SweepError(f"{where.sweep_dir(sweep_name)}: no sweep to resume there (launch writes it; check "
                         f"--run-dir, --storage and the name)")
    spec = parse_spec(yaml.safe_load(text), where.spec_copy(sweep_name))
    places = resolve_places(run_dir, storage or spec.run.storage, optuna_storage or spec.search.storage,
                            tracking_uri or spec.tracking.uri)
    check_optuna_storage(places.optuna_url)
    uri = places.tracking_uri
    client = tracking.client_for(uri)
    experiment_id = tracking.ensure_experiment(client, spec.tracking.experiment, run_dir / "mlartifacts")
    parent_run_id = tracking.find_sweep_run(client, experiment_id, sweep_name)
    if parent_run_id is None:
        raise SweepError(f"MLflow at {hide_secret(uri)}: no parent run for sweep {sweep_name}")
    manifest = read_manifest(ensure_data(spec, run_dir, echo))
    dashboard_url = start_ray(spec, address, echo)
    client.update_run(parent_run_id, status="RUNNING")
    if dashboard_url:
        echo(dashboard_line(dashboard_url))
    echo(f"afsweep: resuming sweep {sweep_name} from {places.sweep_dir(sweep_name)}")
    fs, sweep_path = storage_filesystem(places.sweep_dir(sweep_name))
    tuner = tune.Tuner.restore(sweep_path, trainable=tune.with_resources(run_trial, {"cpu": 1}),
                               resume_unfinished=True, resume_errored=True, storage_filesystem=fs)
    grid = _fit(tuner, client, parent_run_id, end_run=spec.search.confirm is None)
    lost = reconcile_lost_trials(client, experiment_id, sweep_name, grid, places.optuna_url)
    if lost:
        echo(f"afsweep: {len(lost)} trial(s) started just before the driver died were not in its last snapshot; "
             f"their MLflow runs are marked lost and deleted, new trials took their place: {', '.join(lost)}")
    outcome = finish(client, spec, sweep_name, parent_run_id, uri, experiment_id, grid, manifest, t0)
    if spec.search.confirm is not None and outcome.completed:
        sweep = SweepContext.model_validate(next(iter(grid)).config[SETTINGS_KEY]["sweep"])
        outcome.confirmation = _confirm(client, spec, sweep, places, grid, echo, resuming=True)
    outcome.dashboard_url = dashboard_url
    shutdown_ray()
    return outcome
