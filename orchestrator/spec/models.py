"""The sweep spec's sections as pydantic models: what a YAML spec may say, with each field's default and bounds.

Loading a file, `--set` overrides and the checks that need a built method config live in `orchestrator.spec.load`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from orchestrator.spec.objectives import SCORES, Mode, ObjectiveName
from orchestrator.spec.search_space import Distribution, grid_of, grid_size
from orchestrator.spec.strict import FieldError, Strict

PRESET_KEY = "preset"  # a search-space key that picks the whole base config
METHOD_KEY = "method"  # a search-space key that picks one of the spec's `methods`; every other key is a TrainConfig key
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _no_password(url: str | None) -> str | None:
    """A URL setting without a secret in it: the spec is frozen into MLflow and Ray's state, so a password there
    would be stored in plain text. The servers' own mechanisms carry secrets instead."""
    if url and "://" in url and urlsplit(url).password is not None:
        raise ValueError("a password in the URL would be stored with the frozen spec; give it outside the spec "
                         "(PostgreSQL: PGPASSWORD or ~/.pgpass; MLflow: MLFLOW_TRACKING_PASSWORD; S3: the AWS chain)")
    return url


NoSecretURL = Annotated[str | None, AfterValidator(_no_password)]


# --- sections ---------------------------------------------------------------------------------------------------


class DataSpec(Strict):
    # a built-in data set prepared on first use under <run_dir>/data/<dataset>, or an existing manifest URL
    dataset: Literal["fashion-mnist", "digits"] | None = "fashion-mnist"
    manifest: NoSecretURL = None
    order: Literal["resampled", "exact"] = Field("resampled", description="the sample order: resampled shards, "
                                                 "or each sample exactly once per epoch")
    loader_workers: int = Field(0, ge=0)
    on_corrupt: Literal["raise", "skip"] = Field("raise", description="a corrupt sample fails the trial, or is "
                                                "skipped, counted and logged")
    verify: Literal["size", "sha256"] = Field("size", description="how each shard is checked against the manifest")
    cache_dir: str | None = Field(None, description="keep S3 shards in this local folder after their first read")

    @model_validator(mode="before")
    @classmethod
    def _manifest_replaces_default_dataset(cls, data):
        # `data: {manifest: URL}` means "not the default built-in data set", without having to write dataset: null
        if isinstance(data, dict) and data.get("manifest") is not None and "dataset" not in data:
            data = {**data, "dataset": None}
        if isinstance(data, dict) and "mode" in data and "order" not in data:  # the key's name before order
            data = {("order" if k == "mode" else k): v for k, v in data.items()}
        return data


class BaseSpec(Strict):
    preset: str = "tiny-cpu"
    overrides: dict[str, Any] = Field(default_factory=dict)


class TrainSpec(Strict):
    workers: int = Field(2, ge=1, description="Ray Train workers (DDP ranks) per trial")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    threads_per_worker: int = Field(1, ge=1, description="torch intra-op threads in each worker")
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(100, ge=1)
    eval_samples: int = Field(1000, ge=10)
    eval_nstep: int = Field(0, ge=0, description="also score N Euler steps of u(z, t, t) as fid_v<N> (0: off)")
    checkpoint_every: int = Field(50, ge=1, description="steps between Ray Train checkpoints (no scoring), besides "
                                  "the one at every evaluation: what a restarted worker group resumes from")
    max_failures: int = Field(2, ge=0, description="worker-group restarts per trial (Ray Train FailureConfig), "
                              "and restarts of a trial whose own process was lost with its node (Ray Tune)")
    placement: Literal["PACK", "SPREAD"] = Field("PACK", description="a trial's workers on as few nodes as "
                                                 "possible (PACK), or one per node where they fit (SPREAD)")


class EarlyStoppingSpec(Strict):
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int | None = Field(None, ge=1, description="steps; default: the end of the alpha transition")
    reduction_factor: float = Field(2.0, gt=1)


class ConfirmSpec(Strict):
    """The confirmation stage: once the search ends, its `top` best configurations and the base setting are trained
    again with `seeds` fresh seeds each (the same seeds for every configuration: paired), to their end, and each
    one's picked checkpoint is scored again on fresh evaluation noise with `eval_samples` samples."""
    top: int = Field(2, ge=1, description="the search's best configurations to confirm")
    seeds: int = Field(3, ge=2, description="fresh training seeds per configuration (2 or more: an interval needs "
                       "a spread)")
    eval_samples: int | None = Field(None, ge=10, description="samples of the re-scoring; default train.eval_samples")


class SearchSpec(Strict):
    # grid: every combination of the space's choices once (Optuna's GridSampler), no early stopping;
    # optuna-gp: Optuna's Gaussian-process sampler (best on a few continuous parameters, as the main space)
    algorithm: Literal["optuna-tpe", "optuna-gp", "random", "grid"] = "optuna-tpe"
    seed: int = 0
    num_trials: int = Field(4, ge=1)
    max_concurrent: int = Field(2, ge=1)
    startup_trials: int | None = Field(None, ge=1, description="random trials before TPE (or GP) models the results; "
                                       "default min(10, max(2, num_trials // 4))")
    metric: Literal["fid1", "fid2"] = "fid1"
    mode: Literal["min", "max"] = "min"
    space: dict[str, Distribution] = Field(default_factory=dict)
    storage: NoSecretURL = Field(None, description="the Optuna study's database (an SQLAlchemy URL); default "
                                "sqlite:///<run_dir>/optuna.db, postgresql://USER@HOST/DB for a lab")
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    # the base setting (preset + base.overrides, no searched value) as the sweep's first trial, the reference the
    # best is measured against; it runs to its end (ASHA never stops it) and is not a point of Optuna's study
    include_base: bool = True
    # after the search: its best configurations and the base setting trained again on fresh seeds (off when absent)
    confirm: ConfirmSpec | None = None
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    # a multi-objective search: {fid1: min, fid2: min} or {fid1: min, wall_s: min}, in order (the first is the
    # primary one); `metric` still names the single best trial the sweep registers
    objectives: dict[ObjectiveName, Mode] = Field(default_factory=dict)
    # an earlier sweep of the experiment (its name, or `latest`) whose trials seed this sweep's Optuna study
    warm_start: str | None = Field(None, min_length=1)
    warm_start_top: int = Field(1, ge=0, description="the warm start's best configurations run first")

    @field_validator("objectives")
    @classmethod
    def _two_or_more(cls, objectives: dict) -> dict:
        names = list(objectives)
        if names and len(names) < 2:
            raise ValueError(f"name two or more (one objective is search.metric), got {names}")
        if names and not set(names) & set(SCORES):
            raise ValueError(f"{names} has no image-quality score; add fid1 or fid2")
        return objectives

    @model_validator(mode="after")
    def _confirm_ranks_one_metric(self):
        if self.confirm is not None and self.objectives:
            raise FieldError("confirm", "ranks configurations on one metric (search.metric); a multi-objective "
                             "search has a front, not a winner: leave confirm out")
        return self

    @model_validator(mode="after")
    def _no_asha_when_multi_objective(self):
        # ASHA ranks trials on one number: it would stop a trial that is good on another objective
        if self.objectives:
            _run_every_trial_to_its_end(self.early_stopping, "compares one metric; a multi-objective search "
                                        "(objectives) runs every trial to its end: set it to none")
        return self

    @model_validator(mode="after")
    def _grid_runs_every_combination_once(self):
        """`algorithm: grid` runs every combination of the space's choices exactly once: the trial count is the
        grid's size (derived when not given), and nothing may stop, add or skip a combination."""
        if self.algorithm != "grid":
            return self
        try:
            grid = grid_of(self.space)
        except ValueError as e:
            key, message = str(e).split(": ", 1)
            raise FieldError(f"space.{key}", message) from None
        size = grid_size(grid)
        if "num_trials" in self.model_fields_set and self.num_trials != size:
            shape = " x ".join(f"{len(v)} {k}" for k, v in grid.items()) or "no choices"
            raise FieldError("num_trials", f"{self.num_trials}, but the grid has {size} combinations ({shape}); "
                             f"leave num_trials out or set it to {size}")
        self.num_trials = size
        _run_every_trial_to_its_end(self.early_stopping, "stops trials early, and a grid runs every combination to "
                                    "its end: set it to none or leave it out")
        if self.points_to_evaluate:
            raise FieldError("points_to_evaluate", "a grid runs its own combinations only; add the values to the "
                             "space's choices instead")
        if self.warm_start:
            raise FieldError("warm_start", "a grid runs every combination whatever earlier sweeps found; leave "
                             "warm_start out")
        if "include_base" in self.model_fields_set and self.include_base:
            raise FieldError("include_base", "a grid runs its own combinations only; add the base values to the "
                             "space's choices instead")
        self.include_base = False
        return self


def _run_every_trial_to_its_end(es: EarlyStoppingSpec, why_not_asha: str) -> None:
    """Searches that need every trial to its end (a grid, several objectives): ASHA written out is refused
    (FieldError "early_stopping.scheduler: asha <why>"), else early stopping is off."""
    if "scheduler" in es.model_fields_set and es.scheduler == "asha":
        raise FieldError("early_stopping.scheduler", f"asha {why_not_asha}")
    es.scheduler = "none"


class TrackingSpec(Strict):
    uri: NoSecretURL = Field(None, description="MLflow tracking URI; default sqlite:///<run_dir>/mlflow.db")
    experiment: str = "afsweep"
    registered_model: str | None = Field(None, description="default afsweep-<dataset>")
    move_aliases: Literal["if_better", "always"] = Field(
        "if_better", description="best-fid1/best-fid2 move to this sweep's best only if it beats the current holder "
        "on the same extractor and N (if_better), or always")


class RunSpec(Strict):
    storage: NoSecretURL = Field(None, description="where Ray Tune and Ray Train keep the sweep's state and "
                                "checkpoints: a folder (default <run_dir>/ray) or a URI every node reaches "
                                "(s3://bucket/prefix; credentials from the AWS chain)")


class RaySpec(Strict):
    address: str | None = Field(None, description="an existing cluster; default: start a local one")
    shared_filesystem: bool = Field(False, description="every node of the cluster mounts the run dir (NFS): "
                                    "local storage, sqlite stores and a local manifest are then allowed on it")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of the local cluster")
    dashboard_port: int = 8265


MethodName = Annotated[str, Field(pattern=NAME_PATTERN)]


class SweepSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    data: DataSpec = Field(default_factory=DataSpec)
    base: BaseSpec = Field(default_factory=BaseSpec)
    # named bundles of method overrides, applied on top of base.overrides when `search.space.method` picks one:
    # one searched categorical that sets several method keys at once (e.g. MeanFlow = alpha constant 0)
    methods: dict[MethodName, dict[str, Any]] = Field(default_factory=dict)
    train: TrainSpec = Field(default_factory=TrainSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    run: RunSpec = Field(default_factory=RunSpec)
    ray: RaySpec = Field(default_factory=RaySpec)

    @model_validator(mode="after")
    def _data_source(self):
        if (self.data.dataset is None) == (self.data.manifest is None):
            raise ValueError("data: give exactly one of dataset or manifest")
        return self

