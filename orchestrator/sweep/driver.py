"""The sweep driver: spec -> data -> Ray -> Tune (Optuna + ASHA) -> MLflow parent run -> best model registered."""

from __future__ import annotations

import datetime as _dt
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alphaflow.errors import first_line
from orchestrator import tracking
from orchestrator.objectives import format_objectives, search_objectives
from orchestrator.search_space import grid_of
from orchestrator.tracking.provenance import log_dataset_input, manifest_dataset, source_tags
from orchestrator.spec import METHOD_KEY, PRESET_KEY, SweepSpec
from orchestrator.sweep.places import (check_optuna_storage, check_storage, credentials_out_of_ray_env,
                                       hide_secret, read_text, refuse_local_parts_on_a_cluster, resolve_places,
                                       storage_filesystem, write_text)
from orchestrator.trial.config import SweepContext, domain_extractor, method_config

DEFAULT_RUN_DIR = Path("afsweep-runs")


class SweepError(RuntimeError):
    """The sweep cannot start or finish; one line that says what and where."""


class SweepInputError(SweepError):
    """The sweep's input is bad (a missing or truncated shard): exit code 2, before any trial starts."""


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
    untrained_fid1: float | None = None
    registered: dict[str, str] = field(default_factory=dict)
    promotions: list[tracking.Promotion] = field(default_factory=list)
    objectives: dict[str, str] = field(default_factory=dict)   # a multi-objective sweep's, else empty
    pareto: list = field(default_factory=list)                # its front (sweep.pareto.Point), numbered
    dashboard_url: str | None = None
    wall_s: float = 0.0


# --- pieces -----------------------------------------------------------------------------------------------------


def ui_line(tracking_uri: str, experiment_id: str) -> str:
    """Where to look at the runs in MLflow's UI: the training runs view, not MLflow 3's GenAI overview."""
    url = hide_secret(tracking.ui_url(tracking_uri, experiment_id))
    if tracking_uri.startswith(("http://", "https://")):
        return f"afsweep: MLflow UI (training runs): {url}"
    return f"afsweep: MLflow UI: mlflow ui --backend-store-uri {tracking_uri}, then {url}"


def base_train_config(spec: SweepSpec):
    """The method config of the spec's base (preset + overrides), before any searched value."""
    return method_config(spec, {})


def ensure_data(spec: SweepSpec, run_dir: Path, echo=print) -> str:
    """The manifest URL; a built-in data set is prepared on first use under <run_dir>/data/<name>."""
    from alphaflow.data import DataError, prepare_builtin, read_manifest

    if spec.data.manifest:
        url = spec.data.manifest
    else:
        out = (run_dir / "data" / spec.data.dataset).resolve()
        url = str(out / "manifest.parquet")
        if not Path(url).exists():
            echo(f"afsweep: preparing {spec.data.dataset} into {out} (first use; later sweeps reuse it)")
            url = prepare_builtin(spec.data.dataset, str(out))
    from alphaflow.data.preflight import ShardCheckError, check_shards

    try:
        manifest = read_manifest(url)
        n = check_shards(manifest, spec.data.verify)
    except ShardCheckError as e:
        raise SweepInputError(f"{e} (checked before any trial started)") from None
    except DataError as e:
        raise SweepError(str(e)) from None
    echo(f"afsweep: {n} shards of {url} checked ({'size and sha256' if spec.data.verify == 'sha256' else 'size'})")
    return url


def registered_model_name(spec: SweepSpec, manifest) -> str:
    """The registry name of a sweep's best generators: the spec's, else afsweep-<data set>."""
    return spec.tracking.registered_model or tracking.default_model_name(manifest.dataset_id)


# the keys that decide how long a trial is and when its alpha transition ends
_LENGTH_KEYS = ("total_steps", "alpha.kind", "alpha.k_s", "alpha.k_e", "alpha.unit")


def extreme_configs(spec: SweepSpec) -> list:
    """The configurations at the bounds of the searched length and transition keys (and of every searched preset
    and method): what ASHA's max_t and the curriculum-aware grace period must cover."""
    import itertools

    from alphaflow.config import ConfigError

    space = spec.search.space
    keys = [k for k in (PRESET_KEY, METHOD_KEY, *_LENGTH_KEYS) if k in space]
    out = []
    for values in itertools.product(*[list(space[k].extremes().values()) for k in keys]):
        try:
            out.append(method_config(spec, dict(zip(keys, values))))
        except ConfigError:  # e.g. k_e before k_s: a combination the search cannot produce
            continue
    return out or [method_config(spec, {})]


def max_total_steps(spec: SweepSpec) -> int:
    """The longest trial the space can produce (ASHA's max_t: a trial reaching it counts as finished)."""
    return max(c.total_steps for c in extreme_configs(spec))


def transition_end_steps(spec: SweepSpec) -> int:
    """The latest step at which any configuration of the space ends its alpha transition.

    Curriculum-aware early stopping: no trial is judged before its curriculum has run (issue 6).
    """
    from alphaflow.schedules import transition_end_step

    return max(min(c.total_steps, transition_end_step(c.alpha, c.total_steps)) for c in extreme_configs(spec))


def grace_period(spec: SweepSpec, echo=print) -> int:
    end = transition_end_steps(spec)
    forced = spec.search.early_stopping.grace_period
    if forced is None:
        return max(1, end)
    if forced < end:
        echo(f"afsweep: warning: early_stopping.grace_period={forced} is before the end of the alpha transition "
             f"(step {end}); some curricula will be judged before they have run")
    return forced


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def dashboard_line(url: str) -> str:
    """How to open the dashboard: Ray 2.60 asks for its token (the browser prompts; the API wants a header)."""
    token = os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
    return (f"afsweep: Ray dashboard: {url}  (the page asks for the cluster's token: `ray get-auth-token`, "
            f"or the file {token}; API: curl -H \"Authorization: Bearer $(cat {token})\" {url}/api/jobs/)")


def start_ray(spec: SweepSpec, address: str | None, echo=print) -> str | None:
    import ray

    from orchestrator.sweep.ray_adapter import (keep_local_cluster_on_loopback, skip_unused_train_actors,
                                                use_token_auth_if_available)

    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the dashboard's Train tab
    os.environ.setdefault("OMP_NUM_THREADS", str(spec.train.threads_per_worker))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our reporter: the trial table with the searched parameters
    # Tune snapshots the sweep (trials, searcher) at most every 10 s by default; a driver that dies in between
    # loses the trials it started since. The state is small: snapshot every 2 s (resume reconciles the rest).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # checkpoint-only reports (train.checkpoint_every) carry no fid1: ASHA and our searcher skip them, and Tune must
    # not refuse them as results "without the metric"
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    skip_unused_train_actors()
    credentials_out_of_ray_env()  # before any Ray process starts: Tune would copy them into its logs
    if ray.is_initialized():
        return None
    address = address or spec.ray.address
    if address:
        use_token_auth_if_available()
        try:
            ctx = ray.init(address=address, logging_level="WARNING", log_to_driver=True)
        except Exception as e:
            raise SweepError(f"Ray cluster at {address} is not reachable: {first_line(e)}") from None
    else:
        keep_local_cluster_on_loopback()
        per_trial = 1 + spec.train.workers * spec.train.cpus_per_worker
        num_cpus = spec.ray.num_cpus or int(math.ceil(spec.search.max_concurrent * per_trial))
        ctx = ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       _node_ip_address="127.0.0.1",  # a one-machine cluster talks over loopback only
                       dashboard_port=_free_port(spec.ray.dashboard_port), logging_level="WARNING")
    url = ctx.dashboard_url
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url


# --- the sweep ---------------------------------------------------------------------------------------------------


def launch(spec: SweepSpec, spec_text: str, run_dir: Path = DEFAULT_RUN_DIR, address: str | None = None,
           echo=print, sweep_name: str | None = None) -> SweepOutcome:
    import time

    from ray import tune

    from alphaflow.data import read_manifest
    from orchestrator.sweep.search import make_scheduler, make_searcher
    from orchestrator.sweep.warm_start import read_warm_start
    from orchestrator.trial.trainable import (SETTINGS_KEY, DriverHeartbeat, MlflowTrialCloser, run_trial,
                                              trial_dirname)

    t0 = time.time()
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    places = resolve_places(run_dir, spec.run.storage, spec.search.storage, spec.tracking.uri)
    cfg = base_train_config(spec)
    manifest_url = ensure_data(spec, run_dir, echo)  # bad data fails here, before anything is written to MLflow
    check_storage(places.storage)
    check_optuna_storage(places.optuna_url)
    tracking_uri = places.tracking_uri
    client = tracking.client_for(tracking_uri)  # fail before any work if MLflow is unusable
    manifest = read_manifest(manifest_url)
    if not manifest.fid_reference:
        raise SweepError(f"{manifest_url}: no FID reference statistics recorded (re-run afsweep data prepare)")
    warm = read_warm_start(client, spec, tracking_uri)  # before Ray and this sweep's run: `latest` is the last one
    dashboard_url = start_ray(spec, address, echo)
    if address or spec.ray.address:
        refuse_local_parts_on_a_cluster(places, manifest_url, spec.ray.shared_filesystem)
    experiment_id = tracking.ensure_experiment(client, spec.tracking.experiment, run_dir / "mlartifacts")
    extractor = domain_extractor(manifest.dataset_id)
    grace = grace_period(spec, echo)
    model_name = registered_model_name(spec, manifest)

    sweep_name = sweep_name or f"{spec.name}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    frozen = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    parent_run_id = tracking.start_sweep_run(
        client, experiment_id, sweep_name, frozen,
        params={"spec_name": spec.name, "num_trials": spec.search.num_trials, "algorithm": spec.search.algorithm,
                "workers_per_trial": spec.train.workers, "total_steps": cfg.total_steps, "grace_period": grace,
                "manifest": manifest_url, "dataset": manifest.dataset_id, "registered_model": model_name,
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
    stopping = _stopping_line(spec, grace)
    echo(f"afsweep: sweep {sweep_name}: {spec.search.num_trials} trials x {spec.train.workers} workers, "
         f"{_steps_line(spec, cfg.total_steps)}, {stopping}")
    echo(f"afsweep: MLflow parent run {parent_run_id} in experiment '{spec.tracking.experiment}' at "
         f"{hide_secret(tracking_uri)}")
    echo(f"afsweep: sweep state and checkpoints in {places.sweep_dir(sweep_name)}, Optuna study in "
         f"{hide_secret(places.optuna_url)}")
    if warm:
        echo(warm.line())
    echo(ui_line(tracking_uri, experiment_id))
    if dashboard_url:
        echo(dashboard_line(dashboard_url))

    sweep = SweepContext(sweep_name=sweep_name, parent_run_id=parent_run_id, experiment_id=experiment_id,
                         tracking_uri=tracking_uri, manifest=manifest_url, extractor=extractor,
                         train_storage=places.train_storage(sweep_name), run_tags=run_tags,
                         dataset=dataset)
    settings = {"spec": spec.model_dump(mode="json"), "sweep": sweep.model_dump()}
    scheduler = make_scheduler(spec, max_total_steps(spec), grace)
    storage_fs, storage_path = storage_filesystem(places.storage)
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"cpu": 1}),
        param_space={SETTINGS_KEY: settings},
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec, study_name=sweep_name, storage_url=places.optuna_url, warm=warm),
            scheduler=scheduler,
            num_samples=spec.search.num_trials,
            max_concurrent_trials=spec.search.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=sweep_name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            callbacks=[MlflowTrialCloser(tracking_uri, experiment_id, sweep_name),
                       DriverHeartbeat(tracking_uri, parent_run_id)],
            progress_reporter=_reporter(spec),
            # the trial's own process lost with its node: the trial restarts (same id, same Optuna trial, same
            # MLflow run) and its Train run resumes from the latest checkpoint in the storage
            failure_config=tune.FailureConfig(max_failures=spec.train.max_failures),
            verbose=1,
        ),
    )
    write_text(places.spec_copy(sweep_name), frozen)  # what `afsweep resume` rebuilds the sweep from
    grid = _fit(tuner, client, parent_run_id)
    outcome = _finish(client, spec, sweep_name, parent_run_id, tracking_uri, experiment_id, grid, manifest, t0)
    outcome.dashboard_url = dashboard_url
    _shutdown_ray()
    return outcome


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


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def _fit(tuner, client, parent_run_id: str):
    """Run Tune; the parent run ends FINISHED, or KILLED on Ctrl-C, or FAILED (trials keep what they logged)."""
    status = "FAILED"
    try:
        grid = tuner.fit()
        status = "FINISHED"
        return grid
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(parent_run_id, status=status)


def resume(sweep_name: str, run_dir: Path = DEFAULT_RUN_DIR, address: str | None = None, echo=print,
           tracking_uri: str | None = None, storage: str | None = None, optuna_storage: str | None = None
           ) -> SweepOutcome:
    """Finish a sweep whose driver died: Tune restores its trials and the Optuna searcher; trials find their own
    Train runs (deterministic names) and MLflow child runs (tagged by trial id), so nothing runs or logs twice.
    From another machine: the same storage (where the frozen spec is), and the spec's or the given URLs."""
    import time

    from ray import tune

    from alphaflow.data import read_manifest
    from orchestrator.spec import parse_spec
    from orchestrator.trial.trainable import run_trial

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
    grid = _fit(tuner, client, parent_run_id)
    lost = reconcile_lost_trials(client, experiment_id, sweep_name, grid, places.optuna_url)
    if lost:
        echo(f"afsweep: {len(lost)} trial(s) started just before the driver died were not in its last snapshot; "
             f"their MLflow runs are marked lost and deleted, new trials took their place: {', '.join(lost)}")
    outcome = _finish(client, spec, sweep_name, parent_run_id, uri, experiment_id, grid, manifest, t0)
    outcome.dashboard_url = dashboard_url
    _shutdown_ray()
    return outcome


def _grid_trial_ids(grid) -> set[str]:
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
    import optuna

    known = _grid_trial_ids(grid)
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


def _reporter(spec: SweepSpec):
    from ray.tune import CLIReporter

    from orchestrator.sweep.search import tune_metric

    cols = {"step": "step", "loss_unweighted": "mse", "fid1": "fid1", "fid2": "fid2", "fid1_best": "fid1*"}
    params = {k: k for k in list(spec.search.space)[:6]}
    return CLIReporter(metric_columns=cols, parameter_columns=params, max_report_frequency=30,
                       sort_by_metric=True, metric=tune_metric(spec), mode=spec.search.mode)


def trial_states(client, experiment_id: str, sweep: str) -> dict[str, str]:
    """trial id -> completed | pruned | failed | running, from the child runs' tags (the source of truth)."""
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep)
    return {r.data.tags[tracking.TRIAL_TAG]: r.data.tags.get(tracking.STATUS_TAG, "running") for r in runs}


def _finish(client, spec: SweepSpec, sweep_name: str, parent_run_id: str, tracking_uri: str, experiment_id: str,
            grid, manifest, t0: float) -> SweepOutcome:
    """Count the trials, register the best ones with their aliases, put the summary on the parent run."""
    import time

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
    if spec.search.objectives:
        from orchestrator.sweep.pareto import log_front

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


def _sum_trial_metric(client, experiment_id: str, sweep: str, names: tuple[str, ...]) -> dict[str, float]:
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep)
    return {n: sum(r.data.metrics.get(n, 0.0) for r in runs) for n in names}
