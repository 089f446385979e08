"""The method's configuration: every knob of alpha-Flow / MeanFlow / Improved MeanFlow training, with published
defaults (docs/method.md#presets), as pydantic models: choices are `Literal`s, ranges are field constraints, and
cross-field rules are validators, so an impossible setting fails where it is written. Sweeps address fields by
dotted keys ("alpha.k_e", "optim.lr")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from alphaflow.errors import InputError


class ConfigError(ValueError, InputError):
    """An unknown key or a value of the wrong type; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _number(value: Any) -> Any:
    # true/false and quoted text are never numbers here (pydantic's lax mode would take True as 1 and "3" as 3)
    if isinstance(value, (bool, str)):
        raise ValueError("expected a number")
    return value


def _whole(value: Any) -> Any:
    value = _number(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected an integer")
        return int(value)
    return value


Float = Annotated[float, BeforeValidator(_number)]
Int = Annotated[int, BeforeValidator(_whole)]
Bool = StrictBool


ScheduleKind = Literal["constant", "step", "linear", "cosine", "sigmoid"]


class ModelConfig(_Section):
    size: Literal["micro", "tiny", "small", "S", "B", "L", "XL"] = "tiny"   # micro/tiny/small: CPU sizes
    patch_size: Literal[1, 2, 4, 8] = 4


class ScheduleConfig(_Section):
    """A value over training: constant | step | linear | cosine | sigmoid, from `start` to `end` between k_s, k_e."""
    kind: ScheduleKind = "sigmoid"
    start: Float = Field(1.0, ge=0.0, le=1.0)
    end: Float = Field(0.0, ge=0.0, le=1.0)
    k_s: Float = 0.0
    k_e: Float = 1.0
    unit: Literal["fraction", "steps"] = "fraction"   # of total_steps, or absolute steps
    gamma: Float = 25.0         # sigmoid sharpness
    eta: Float = 5e-3           # snap to the endpoint within eta of it

    @model_validator(mode="after")
    def _ordered(self):
        if self.k_e < self.k_s:
            raise ValueError(f"k_e ({self.k_e}) must not be before k_s ({self.k_s})")
        return self


class TimeConfig(_Section):
    sampler: Literal["logit_normal", "uniform", "r_ut"] = "logit_normal"
    mu: Float = -0.4
    sigma: Float = 1.0
    fm_sampler: str = "same"        # for the r = t rows: a name registered in alphaflow.timesteps.FM_SAMPLERS
    fm_mu: Float = -0.4
    fm_sigma: Float = 1.0

    @field_validator("fm_sampler")
    @classmethod
    def _registered(cls, name: str) -> str:
        # users may register their own samplers; imported here because alphaflow.timesteps loads torch (3.6 s)
        # and this module does not (the CLI's `validate`)
        from alphaflow.timesteps import FM_SAMPLERS

        if name not in FM_SAMPLERS:
            raise ValueError(f"{name!r} is not one of {', '.join(FM_SAMPLERS)}")
        return name


class LossConfig(_Section):
    # the member: alpha-flow (trajectory FM / Shortcut / MeanFlow by alpha) or imf (Improved MeanFlow's v-loss)
    objective: Literal["alpha-flow", "imf"] = "alpha-flow"
    adaptive_p: Float = 1.0
    adaptive_c: Float = 1e-3
    reduce: Literal["mean", "sum"] = "mean"   # over elements
    clip: Float = 4.0               # target clip of the r < t rows for 0 < alpha <= 1 (the official code's)
    clip_alpha1: Bool = True        # also at alpha = 1 (target v), as the official alpha-Flow code; False: unclipped
    minsnr_gamma: Float = Field(0.0, ge=0.0)  # 0 = off; MinSNR time weight on the r = t rows
    beta: Bool = False              # Improved MeanFlow's progressive Delta-t weight on r < t rows
    beta_k: Float = 1.0


class GuidanceConfig(_Section):
    """Training-time classifier-free guidance (docs/method.md#training-time-guidance)."""
    omega: Float = 1.0
    kappa: Float = 0.0
    t_min: Float = 0.0
    t_max: Float = 1.0
    label_dropout: Float = Field(0.1, ge=0.0, lt=1.0)
    # guidance as a condition (loss.objective imf): the network takes (omega, t_min, t_max) and trains over
    # omega ~ omega^-omega_power on [1, omega_max] and, with random_interval, t_min ~ U[0, .5], t_max ~ U[.5, 1]
    conditioned: Bool = False
    omega_max: Float = Field(8.0, ge=1.0)
    omega_power: Float = Field(1.0, ge=0.0)
    random_interval: Bool = True


class OptimConfig(_Section):
    lr: Float = Field(1e-4, gt=0.0)
    beta1: Float = 0.9
    beta2: Float = 0.95
    weight_decay: Float = 0.0
    warmup_steps: Int = Field(0, ge=0)
    grad_clip: Float = 16.0


class EMAConfig(_Section):
    half_life: Float = Field(6931.0, gt=0.0)  # steps
    extra_half_lives: list[Float] = Field(default_factory=list)
    ramp: Float = 0.05              # effective half-life min(half_life, ramp * step)


class SamplingConfig(_Section):
    t_mid: Float = Field(0.5, gt=0.0, lt=1.0)
    two_nfe: Literal["ode", "consistency"] = "ode"
    # for guidance-conditioned models: the scale and interval to sample with
    guidance: Float = Field(1.0, ge=1.0)
    guidance_t_min: Float = Field(0.0, ge=0.0, le=1.0)
    guidance_t_max: Float = Field(1.0, ge=0.0, le=1.0)


class TrainConfig(_Section):
    """The method: what one training run does, independent of where it runs."""
    seed: Int = 0
    total_steps: Int = Field(400, ge=1)
    batch_size: Int = Field(64, ge=1)   # global; each rank gets batch_size // world_size
    # auto: bf16 autocast where the device multiplies bf16 natively (CUDA sm80+, CPUs with AMX), else fp32
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    # fast: explicit CPU attention, the alpha = 0 JVP as a tangent pass, fused Adam, one host sync per step
    # (docs/internals.md#the-fast-step); fused: fast plus the compiled CPU GELU (a few seconds of compiling per
    # process for ~2% of a step: for runs of hours); reference: the eager path both are measured against, same
    # numbers to 1e-5
    kernels: Literal["fast", "fused", "reference"] = "fast"
    diagnostics_every: Int = Field(0, ge=0)
    model: ModelConfig = Field(default_factory=ModelConfig)
    alpha: ScheduleConfig = Field(default_factory=ScheduleConfig)
    ratio_fm: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(kind="constant", start=0.5, end=0.5))
    time: TimeConfig = Field(default_factory=TimeConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    guidance: GuidanceConfig = Field(default_factory=GuidanceConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    ema: EMAConfig = Field(default_factory=EMAConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @model_validator(mode="after")
    def _members(self):
        if self.loss.objective == "imf" and not (self.alpha.kind == "constant" and self.alpha.start == 0.0):
            raise ValueError("loss.objective imf is a MeanFlow member: set alpha.kind: constant, alpha.start: 0")
        if self.guidance.conditioned:
            if self.loss.objective != "imf":
                raise ValueError("guidance.conditioned needs loss.objective: imf")
            if self.guidance.omega != 1.0 or self.guidance.kappa != 0.0:
                raise ValueError("guidance.conditioned draws omega per row: leave guidance.omega 1 and kappa 0")
        return self

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        # checkpoints and registered models written before the guidance section was renamed call it `cfg`
        if isinstance(data, dict) and "cfg" in data and "guidance" not in data:
            data = {("guidance" if k == "cfg" else k): v for k, v in data.items()}
        return data


# --- dotted keys --------------------------------------------------------------------------------------------------


def _error(e: ValidationError) -> ConfigError:
    """The first problem as one line naming the dotted key."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].replace("Value error, ", "")
    if err["type"] == "extra_forbidden":
        return ConfigError(f"unknown key {key!r}")
    if err["type"] == "literal_error":
        return ConfigError(f"{key}: {err['input']!r} is not one of {msg.split('Input should be ', 1)[-1]}")
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return ConfigError(f"{key}: is a section; set its fields, e.g. {key}.<field>")
    got = "" if isinstance(err["input"], dict) else f", got {err['input']!r}"
    return ConfigError(f"{key or '(config)'}: {msg}{got}")


def dotted_keys(d: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """A mapping written nested (`alpha: {kind: x}`) or flat (`alpha.kind: x`), or a mix, as flat dotted keys."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(dotted_keys(v, sep, key + sep))
        else:
            out[key] = v
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A validated copy of cfg with dotted keys set ("alpha.k_e": 0.6); nested dicts are accepted too."""
    data = cfg.model_dump()
    for key, value in dotted_keys(overrides).items():
        *sections, name = key.split(".")
        target = data
        for part in sections:
            if not isinstance(target.get(part), dict):
                raise ConfigError(f"unknown key {key!r}")
            target = target[part]
        if name not in target:
            raise ConfigError(f"unknown key {key!r}")
        if isinstance(target[name], dict):
            raise ConfigError(f"{key}: is a section; set its fields, e.g. {key}.{next(iter(target[name]))}")
        target[name] = value
    return config_from_dict(data)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.model_dump()


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(d)
    except ValidationError as e:
        raise _error(e) from None


def flatten(cfg: TrainConfig) -> dict[str, Any]:
    """Dotted keys -> values, for MLflow params ("alpha.k_e": 1.0)."""
    return dotted_keys(config_to_dict(cfg))


def with_sampling(cfg: TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    """cfg sampling with a sampling sweep's settings; `half_life` (which EMA is loaded) and `probe_steps` (what is
    scored) are not sampling fields."""
    return apply_overrides(cfg, {f"sampling.{k}": v for k, v in settings.items()
                                 if k not in ("half_life", "probe_steps")})
