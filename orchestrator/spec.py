"""The sweep spec: a YAML file validated into pydantic models.

Every error comes out as one `SpecError` line that names the file and the key, e.g.
`sweeps/x.yaml: search.space.optim.lr.low: Input should be a valid number`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from orchestrator.objectives import SCORES, Mode, ObjectiveName
from orchestrator.search_space import Choice, Distribution, Fixed, grid_of, grid_size


PRESET_KEY = "preset"  # a search-space key that picks the whole base config
METHOD_KEY = "method"  # a search-space key that picks one of the spec's `methods`; every other key is a TrainConfig key
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SpecError(ValueError):
    """A sweep spec that cannot be used; the message is one line naming the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_password(url: str | None) -> str | None:
    """A URL setting without a secret in it: the spec is frozen into MLflow and Ray's state, so a password there
    would be stored in plain text. The servers' own mechanisms carry secrets instead."""
    from urllib.parse import urlsplit

    if url and "://" in url and urlsplit(url).password is not None:
        raise ValueError("a password in the URL would be stored with the frozen spec; give it outside the spec "
                         "(PostgreSQL: PGPASSWORD or ~/.pgpass; MLflow: MLFLOW_TRACKING_PASSWORD; S3: the AWS chain)")
    return url


NoSecretURL = Annotated[str | None, AfterValidator(_no_password)]


# --- sections ---------------------------------------------------------------------------------------------------


class DataSpec(_Strict):
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


class BaseSpec(_Strict):
    preset: str = "tiny-cpu"
    overrides: dict[str, Any] = Field(default_factory=dict)


class TrainSpec(_Strict):
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


class EarlyStoppingSpec(_Strict):
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int | None = Field(None, ge=1, description="steps; default: the end of the alpha transition")
    reduction_factor: float = Field(2.0, gt=1)


class SearchSpec(_Strict):
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
    def _no_asha_when_multi_objective(self):
        # ASHA ranks trials on one number: it would stop a trial that is good on another objective
        if self.objectives:
            _run_every_trial_to_its_end(self.early_stopping, "compares one metric; a multi-objective search "
                                        "(objectives) runs every trial to its end: set it to none")
        return self


def _run_every_trial_to_its_end(es: EarlyStoppingSpec, why_not_asha: str) -> None:
    """Searches that need every trial to its end (a grid, several objectives): ASHA written out is refused
    (ValueError "early_stopping.scheduler: asha <why>"), else early stopping is off."""
    if "scheduler" in es.model_fields_set and es.scheduler == "asha":
        raise ValueError(f"early_stopping.scheduler: asha {why_not_asha}")
    es.scheduler = "none"


class TrackingSpec(_Strict):
    uri: NoSecretURL = Field(None, description="MLflow tracking URI; default sqlite:///<run_dir>/mlflow.db")
    experiment: str = "afsweep"
    registered_model: str | None = Field(None, description="default afsweep-<dataset>")
    move_aliases: Literal["if_better", "always"] = Field(
        "if_better", description="best-fid1/best-fid2 move to this sweep's best only if it beats the current holder "
        "on the same extractor and N (if_better), or always")


class RunSpec(_Strict):
    storage: NoSecretURL = Field(None, description="where Ray Tune and Ray Train keep the sweep's state and "
                                "checkpoints: a folder (default <run_dir>/ray) or a URI every node reaches "
                                "(s3://bucket/prefix; credentials from the AWS chain)")


class RaySpec(_Strict):
    address: str | None = Field(None, description="an existing cluster; default: start a local one")
    shared_filesystem: bool = Field(False, description="every node of the cluster mounts the run dir (NFS): "
                                    "local storage, sqlite stores and a local manifest are then allowed on it")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of the local cluster")
    dashboard_port: int = 8265


MethodName = Annotated[str, Field(pattern=NAME_PATTERN)]


class SweepSpec(_Strict):
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


# --- loading --------------------------------------------------------------------------------------------------


def _loc(err: dict) -> str:
    # pydantic adds the union member tag (e.g. "uniform") to the location of discriminated unions: keep it out
    parts = [_show_key(p) for p in err["loc"]]
    return ".".join(parts) or "(top level)"


def _show_key(key) -> str:
    """A key as it reads in the spec; quoted when it holds whitespace or control characters (one-line errors)."""
    text = str(key)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


class _SpecLoader(yaml.SafeLoader):
    """YAML as people write numbers: YAML 1.1 reads `1e4` and `1.0e4` (no dot or no exponent sign) as strings."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """A spec's YAML (or a --set value), with 1e4-style numbers read as numbers."""
    return yaml.load(text, Loader=_SpecLoader)


def _first_error(path: str, e: ValidationError) -> SpecError:
    err = e.errors()[0]
    msg = err["msg"].replace("Value error, ", "")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return SpecError(f"{path}: {_loc(err)}: {msg}{more}")


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise SpecError(f"--set {key}: {p} is not a section")
    d[parts[-1]] = value


def _set_space_key(space: dict, rest: str, value: Any) -> None:
    """`--set search.space.alpha.k_e.high=0.7`: the searched key (itself dotted) is the longest one the space has;
    what follows it is a field of its distribution. Otherwise the whole distribution is set."""
    for name in sorted(space, key=len, reverse=True):
        if rest.startswith(name + ".") and isinstance(space[name], dict):
            space[name] = {**space[name], rest[len(name) + 1:]: value}
            return
    space[rest] = value


def apply_sets(raw: dict, sets: list[str], path: str) -> dict:
    """Apply `--set key=value` overrides (value parsed as YAML) to the raw spec dict."""
    raw = copy.deepcopy(raw)
    for item in sets:
        if "=" not in item:
            raise SpecError(f"{path}: --set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        try:
            value = read_yaml(text)
        except yaml.YAMLError:
            value = text
        # method keys may contain dots themselves (base.overrides.alpha.k_e): keep the rest of the key whole
        if key.startswith("base.overrides."):
            raw.setdefault("base", {}).setdefault("overrides", {})[key[len("base.overrides."):]] = value
        elif key.startswith("search.space."):
            _set_space_key(raw.setdefault("search", {}).setdefault("space", {}), key[len("search.space."):], value)
        else:
            _set_dotted(raw, key, value)
    return raw


def parse_spec(raw: Any, path: str = "<spec>") -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise _first_error(path, e) from None
    _check_grid(spec, path)
    _check_method_keys(spec, path)
    return spec


def _check_grid(spec: SweepSpec, path: str) -> None:
    """`algorithm: grid` runs every combination of the space's choices exactly once: the trial count is the grid's
    size (derived when not given), and nothing may stop, add or skip a combination."""
    s = spec.search
    if s.algorithm != "grid":
        return
    try:
        grid = grid_of(s.space)
    except ValueError as e:
        raise SpecError(f"{path}: search.space.{e}") from None
    size = grid_size(grid)
    if "num_trials" in s.model_fields_set and s.num_trials != size:
        shape = " x ".join(f"{len(v)} {k}" for k, v in grid.items()) or "no choices"
        raise SpecError(f"{path}: search.num_trials: {s.num_trials}, but the grid has {size} combinations "
                        f"({shape}); leave num_trials out or set it to {size}")
    s.num_trials = size
    try:
        _run_every_trial_to_its_end(s.early_stopping, "stops trials early, and a grid runs every combination to "
                                    "its end: set it to none or leave it out")
    except ValueError as e:
        raise SpecError(f"{path}: search.{e}") from None
    if s.points_to_evaluate:
        raise SpecError(f"{path}: search.points_to_evaluate: a grid runs its own combinations only; add the values "
                        f"to the space's choices instead")
    if s.warm_start:
        raise SpecError(f"{path}: search.warm_start: a grid runs every combination whatever earlier sweeps found; "
                        f"leave warm_start out")


def load_spec(path: str | Path, sets: list[str] | None = None) -> SweepSpec:
    """Read, override and validate a sweep spec. Raises SpecError (one line) on any problem."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: spec file not found")
    try:
        raw = read_yaml(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{p}:{where}: invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{p}: not a text file") from None
    if sets:
        raw = apply_sets(raw if isinstance(raw, dict) else {}, sets, str(p))
    return parse_spec(raw, str(p))


def _check_method_keys(spec: SweepSpec, path: str) -> None:
    """Every configuration a trial can get must be valid: the base (preset + overrides), and each bound of each
    searched key on it, built by the same function that builds every trial."""
    from alphaflow.config import ConfigError
    from orchestrator.trial.config import method_config

    try:
        method_config(spec, {})
    except (KeyError, ValueError) as e:
        where = "base.preset" if isinstance(e, KeyError) else "base.overrides"
        raise SpecError(f"{path}: {where}: {_message(e)}") from None
    space = spec.search.space
    for key, names in ((PRESET_KEY, "preset"), (METHOD_KEY, "method")):
        if key in space and not isinstance(space[key], (Choice, Fixed)):
            raise SpecError(f"{path}: search.space.{key}: must be a choice or fixed list of {names} names")
    # each bound, with the other searched keys at typical values (a cross-field rule such as k_s <= k_e is judged
    # against what the search would set, not against a base value the search replaces)
    typical = {k: d.representative() for k, d in space.items() if _is_known(spec, k, d)}
    _check_methods(spec, path, {k: v for k, v in typical.items() if k != METHOD_KEY})
    for key, dist in space.items():
        others = {k: v for k, v in typical.items() if k != key}
        for bound, value in dist.extremes().items():
            try:
                method_config(spec, {**others, key: value})
            except (KeyError, ConfigError) as e:
                where = f"search.space.{key}" if "unknown key" in str(e) else f"search.space.{key}.{bound}"
                raise SpecError(f"{path}: {where}: {_message(e)}") from None
        for cond in (dist.when or {}):
            if cond not in spec.search.space:
                raise SpecError(f"{path}: search.space.{key}.when: {cond!r} is not a searched parameter")


def _check_methods(spec: SweepSpec, path: str, others: dict[str, Any]) -> None:
    """Every entry of `methods` builds into a valid config (with the searched keys at typical values), sets only
    method keys, and none that the space also searches (which would silently override it)."""
    from alphaflow.config import ConfigError
    from orchestrator.trial.config import method_config

    for name, overrides in spec.methods.items():
        for key in _dotted(overrides):
            if key == PRESET_KEY:
                raise SpecError(f"{path}: methods.{name}.preset: a method sets method keys; choose the preset with "
                                f"base.preset or search.space.preset")
            if key in spec.search.space:
                raise SpecError(f"{path}: methods.{name}.{key}: also searched (search.space.{key}); set each key "
                                f"in one place")
        try:
            method_config(spec, {**others, METHOD_KEY: name})
        except (KeyError, ConfigError) as e:
            raise SpecError(f"{path}: methods.{name}: {_message(e)}") from None


def _dotted(overrides: dict, prefix: str = "") -> list[str]:
    """The dotted keys of an overrides mapping written flat (`alpha.kind: x`) or nested (`alpha: {kind: x}`)."""
    keys = []
    for k, v in overrides.items():
        key = f"{prefix}{k}"
        keys += _dotted(v, key + ".") if isinstance(v, dict) else [key]
    return keys


def _is_known(spec: SweepSpec, key: str, dist) -> bool:
    """A searched key whose typical value is valid on its own (else its own check reports it)."""
    from orchestrator.trial.config import method_config

    try:
        method_config(spec, {key: dist.representative()})
        return True
    except (KeyError, ValueError):
        return False


def _message(e: Exception) -> str:
    return e.args[0] if isinstance(e, KeyError) and e.args else str(e)
