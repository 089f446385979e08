"""The method's configuration: every knob of alpha-Flow / MeanFlow / Improved MeanFlow training, with published
defaults (docs/method.md#presets). Sweeps address fields by dotted keys ("alpha.k_e", "optim.lr")."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type; the message names the key."""


@dataclass
class ModelConfig:
    size: str = "tiny"          # micro | tiny | small (CPU) | S | B | L | XL
    patch_size: int = 4


@dataclass
class ScheduleConfig:
    """A value over training: constant | step | linear | cosine | sigmoid, from `start` to `end` between k_s, k_e."""
    kind: str = "sigmoid"
    start: float = 1.0
    end: float = 0.0
    k_s: float = 0.0
    k_e: float = 1.0
    unit: str = "fraction"      # fraction (of total_steps) | steps
    gamma: float = 25.0         # sigmoid sharpness
    eta: float = 5e-3           # snap to the endpoint within eta of it


@dataclass
class TimeConfig:
    sampler: str = "logit_normal"   # logit_normal | uniform | r_ut
    mu: float = -0.4
    sigma: float = 1.0
    fm_sampler: str = "same"        # for the r = t rows: same | logit_normal | uniform
    fm_mu: float = -0.4
    fm_sigma: float = 1.0


@dataclass
class LossConfig:
    adaptive_p: float = 1.0
    adaptive_c: float = 1e-3
    reduce: str = "mean"            # mean | sum over elements
    clip: float = 4.0               # target clip of the 0 < alpha < 1 branch
    minsnr_gamma: float = 0.0       # 0 = off; MinSNR time weight on the r = t rows
    beta: bool = False              # Improved MeanFlow's progressive Delta-t weight on r < t rows
    beta_k: float = 1.0


@dataclass
class GuidanceConfig:
    omega: float = 1.0
    kappa: float = 0.0
    t_min: float = 0.0
    t_max: float = 1.0
    label_dropout: float = 0.1


@dataclass
class OptimConfig:
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 16.0


@dataclass
class EMAConfig:
    half_life: float = 6931.0       # steps
    extra_half_lives: list[float] = field(default_factory=list)
    ramp: float = 0.05              # effective half-life min(half_life, ramp * step)


@dataclass
class SamplingConfig:
    t_mid: float = 0.5
    two_nfe: str = "ode"            # ode | consistency


@dataclass
class TrainConfig:
    seed: int = 0
    total_steps: int = 400
    batch_size: int = 64            # global; each rank gets batch_size // world_size
    precision: str = "fp32"         # fp32 | bf16
    diagnostics_every: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    alpha: ScheduleConfig = field(default_factory=ScheduleConfig)
    ratio_fm: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(kind="constant", start=0.5, end=0.5))
    time: TimeConfig = field(default_factory=TimeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    cfg: GuidanceConfig = field(default_factory=GuidanceConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


CHOICES = {
    "model.size": ("micro", "tiny", "small", "S", "B", "L", "XL"),
    "model.patch_size": (1, 2, 4, 8),
    "alpha.kind": ("constant", "step", "linear", "cosine", "sigmoid"),
    "ratio_fm.kind": ("constant", "step", "linear", "cosine", "sigmoid"),
    "alpha.unit": ("fraction", "steps"),
    "ratio_fm.unit": ("fraction", "steps"),
    "time.sampler": ("logit_normal", "uniform", "r_ut"),
    "loss.reduce": ("mean", "sum"),
    "precision": ("fp32", "bf16"),
    "sampling.two_nfe": ("ode", "consistency"),
}


def _choices(key: str) -> tuple | None:
    """The allowed values of a key; the r = t samplers come from their registry, so users can add their own."""
    if key == "time.fm_sampler":
        from alphaflow.timesteps import FM_SAMPLERS

        return tuple(FM_SAMPLERS)
    return CHOICES.get(key)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(typ)
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: cannot set a section to a single value")


def _field_types(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of cfg with dotted keys set ("alpha.k_e": 0.6); nested dicts are accepted too."""
    cfg = config_from_dict(config_to_dict(cfg))
    for key, value in _flatten_dict(overrides).items():
        parts = key.split(".")
        target = cfg
        for p in parts[:-1]:
            if not dataclasses.is_dataclass(target) or p not in _field_types(target):
                raise ConfigError(f"unknown key {key!r}")
            target = getattr(target, p)
        name = parts[-1]
        if not dataclasses.is_dataclass(target) or name not in _field_types(target):
            raise ConfigError(f"unknown key {key!r}")
        typ = _field_types(target)[name]
        if dataclasses.is_dataclass(typ):
            raise ConfigError(f"{key}: is a section; set its fields, e.g. {key}.{dataclasses.fields(typ)[0].name}")
        value = _coerce(key, value, typ)
        allowed = _choices(key)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")
        setattr(target, name, value)
    validate(cfg)
    return cfg


def _flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_dict(v, key + "."))
        else:
            out[key] = v
    return out


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks that a single type check cannot make."""
    if cfg.total_steps < 1:
        raise ConfigError(f"total_steps: must be >= 1, got {cfg.total_steps}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {cfg.batch_size}")
    for name in ("alpha", "ratio_fm"):
        s: ScheduleConfig = getattr(cfg, name)
        if not (0.0 <= s.start <= 1.0 and 0.0 <= s.end <= 1.0):
            raise ConfigError(f"{name}.start/end: must lie in [0, 1], got {s.start}, {s.end}")
        if s.k_e < s.k_s:
            raise ConfigError(f"{name}.k_e ({s.k_e}) must not be before {name}.k_s ({s.k_s})")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if not 0.0 <= cfg.cfg.label_dropout < 1.0:
        raise ConfigError(f"cfg.label_dropout: must lie in [0, 1), got {cfg.cfg.label_dropout}")
    if cfg.ema.half_life <= 0:
        raise ConfigError(f"ema.half_life: must be > 0, got {cfg.ema.half_life}")
    if not 0.0 < cfg.sampling.t_mid < 1.0:
        raise ConfigError(f"sampling.t_mid: must lie in (0, 1), got {cfg.sampling.t_mid}")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    def build(cls, data):
        kwargs = {}
        types = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            typ = types[f.name]
            kwargs[f.name] = build(typ, data[f.name]) if dataclasses.is_dataclass(typ) else data[f.name]
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in {cls.__name__}")
        return cls(**kwargs)

    return build(TrainConfig, d)


def flatten(cfg: TrainConfig) -> dict[str, Any]:
    """Dotted keys -> values, for MLflow params ("alpha.k_e": 1.0)."""
    return _flatten_dict(config_to_dict(cfg))
