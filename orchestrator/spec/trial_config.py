"""One trial's whole configuration, built in one place from (spec, searched parameters).

`validate`, `preview`, the ASHA bounds and every trial call `build_trial_config` (or `method_config`, its method
part), so a setting is resolved once: the preset, the spec's overrides, the searched values, the trial's seed.
The object crosses Ray Train to every worker as itself (pickled); it is dumped only for MLflow params.
"""

from __future__ import annotations

import zlib
from typing import Any

from pydantic import Field

from alphaflow.config import TrainConfig, apply_overrides, dotted_keys
from alphaflow.presets import get_preset
from orchestrator.spec.models import METHOD_KEY, PRESET_KEY, DataSpec, SweepSpec, TrainSpec
from orchestrator.spec.strict import Strict

# a trial's config key naming its role when it is not a search point: `base` (the spec's base setting, the
# reference the best is measured against). Not a searched parameter: Optuna never sees it.
ROLE_KEY = "afsweep_role"
SEARCH_ROLE, BASE_ROLE, CONFIRM_ROLE = "search", "base", "confirm"
# a confirmation trial's config key: {"of": the search trial id it confirms (or "base"), "name": that trial's name,
# "params": its searched values, "seed": the fresh training seed}
CONFIRM_KEY = "afsweep_confirm"

# feature extractor of the sweep's fid1/fid2 per built-in data set (others: the Fashion-MNIST CNN)
DOMAIN_EXTRACTOR = {"fashion-mnist": "fashion-mnist-cnn", "digits": "digits-cnn"}


class SweepContext(Strict):
    """What only the running sweep knows: where its data, runs and storage are. None outside a sweep."""
    sweep_name: str
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    manifest: str
    extractor: str
    train_storage: str
    run_tags: dict[str, str] = Field(default_factory=dict)   # where the sweep came from (provenance.source_tags)
    dataset: dict[str, Any] | None = None                    # the trials' MLflow dataset input


class TrialConfig(Strict):
    """The method config of one trial beside the spec's own data and train sections (not copies of their keys) and,
    in a sweep, the sweep's context and the trial's MLflow run."""
    method: TrainConfig
    preset: str
    method_name: str | None = None     # the spec's `methods` entry the trial uses (search.space.method), if any
    searched: dict[str, Any] = Field(default_factory=dict)
    data: DataSpec
    train: TrainSpec
    sweep: SweepContext | None = None
    run_id: str | None = None          # the trial's child run, set once it exists
    role: str = SEARCH_ROLE            # search, base (the reference trial: no searched value), or confirm
    rescore_samples: int | None = None # confirm: score the picked checkpoint again on fresh noise, with N samples


def method_overrides(spec: SweepSpec, name: Any) -> dict[str, Any]:
    """The overrides of the spec's method `name` (search.space.method); KeyError naming the known ones."""
    if name not in spec.methods:
        known = ", ".join(spec.methods) or "none (add a top-level methods: section)"
        raise KeyError(f"unknown method {name!r}; the spec's methods: {known}")
    return spec.methods[name]


def method_config(spec: SweepSpec, params: dict[str, Any], trial_number: int | None = None) -> TrainConfig:
    """The method config of one trial: the preset (the searched one, else the spec's), the spec's overrides, the
    chosen method's overrides (`methods`), the other searched values, and (in a sweep) a seed offset per trial so
    trials do not share noise, unless the seed is searched or set by the method."""
    bundle = method_overrides(spec, params[METHOD_KEY]) if METHOD_KEY in params else {}
    searched = {k: v for k, v in params.items() if k not in (PRESET_KEY, METHOD_KEY)}
    # a searched seed is the trial's seed as it is: trials of a grid over methods x seeds pair by it (the same
    # initial weights, data order and per-step noise seeds for every method at one seed)
    per_trial = {}
    if trial_number is not None and "seed" not in params and "seed" not in bundle:
        per_trial = {"seed": spec.search.seed * 1000 + trial_number}
    # later layers win key by key (apply_overrides sets dotted leaves), and the result is validated once
    layers = {**dotted_keys(spec.base.overrides), **dotted_keys(bundle), **dotted_keys(searched), **per_trial}
    return apply_overrides(get_preset(params.get(PRESET_KEY, spec.base.preset)), layers)


def build_trial_config(spec: SweepSpec, params: dict[str, Any], sweep: SweepContext | None = None,
                       trial_number: int | None = None, role: str = SEARCH_ROLE) -> TrialConfig:
    name = params.get(METHOD_KEY)
    return TrialConfig(method=method_config(spec, params, trial_number),
                       preset=str(params.get(PRESET_KEY, spec.base.preset)),
                       method_name=None if name is None else str(name), searched=dict(params),
                       data=spec.data, train=spec.train, sweep=sweep, role=role)


def domain_extractor(dataset_id: str | None) -> str:
    return DOMAIN_EXTRACTOR.get((dataset_id or "").split(":")[0], DOMAIN_EXTRACTOR["fashion-mnist"])


def trial_number(trial_id: str) -> int:
    """Tune trial ids look like "1a2b3c4d_00003": the suffix counts trials within the sweep."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else zlib.crc32(trial_id.encode()) % 10_000
