"""The search space's distributions: what Optuna draws from each (`suggest`), the values that bound what it can
produce (`extremes`: checked against the method's constraints by `validate`, and ASHA's bounds), and one typical
value (`representative`). A spec's `search.space` maps dotted method keys to these."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from orchestrator.spec.strict import Strict


class _Dist(Strict):
    """A search-space distribution: what Optuna draws (`suggest`), the values that bound what it can produce
    (`extremes`: checked against the method's constraints and used for ASHA's bounds), and one typical value."""
    # `when: {param: value}` or `when: {param: [v1, v2]}`: the parameter exists only if the other has that value
    when: dict[str, Any] | None = None

    # each distribution below has suggest(trial, key) and extremes(): {where the bound is written ("low",
    # "values[2]"): its value}

    def representative(self) -> Any:
        return next(iter(self.extremes().values()))


class _Range(_Dist):
    """A distribution over [low, high]: its bounds are its extremes. Subclasses give low and high their type."""

    @model_validator(mode="after")
    def _order(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self

    def extremes(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}


class Uniform(_Range):
    type: Literal["uniform"]
    low: float
    high: float

    def suggest(self, trial, key: str) -> float:
        return trial.suggest_float(key, self.low, self.high)

    def representative(self) -> float:
        return (self.low + self.high) / 2


class LogUniform(Uniform):
    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self):
        if self.low <= 0:
            raise ValueError(f"low ({self.low}) must be > 0 for loguniform")
        return self

    def suggest(self, trial, key: str) -> float:
        return trial.suggest_float(key, self.low, self.high, log=True)

    def representative(self) -> float:
        return (self.low * self.high) ** 0.5


class IntRange(_Range):
    type: Literal["int"]
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial, key: str) -> int:
        return trial.suggest_int(key, self.low, self.high, step=self.step, log=self.log)


class Choice(_Dist):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)

    def suggest(self, trial, key: str) -> Any:
        return trial.suggest_categorical(key, self.values)

    def extremes(self) -> dict[str, Any]:
        return {f"values[{i}]": v for i, v in enumerate(self.values)}


class Fixed(_Dist):
    type: Literal["fixed"]
    value: Any

    def suggest(self, trial, key: str) -> Any:
        return self.value  # a constant: Optuna does not search it

    def extremes(self) -> dict[str, Any]:
        return {"value": self.value}


Distribution = Annotated[Uniform | LogUniform | IntRange | Choice | Fixed, Field(discriminator="type")]


def grid_of(space: dict[str, Any]) -> dict[str, list[Any]]:
    """The combinations a grid search runs, as Optuna's GridSampler takes them: each `choice` key's values (a
    `fixed` key is a constant, not a grid axis). ValueError "<key>: why" for a key a grid cannot run: a range has
    no finite list of values, a `when:` would make combinations that do not exist, a repeated value would run
    twice."""
    grid: dict[str, list[Any]] = {}
    for key, dist in space.items():
        if dist.when:
            raise ValueError(f"{key}.when: a grid runs every combination of its choices; a conditional "
                             f"parameter is not supported there")
        if isinstance(dist, Fixed):
            continue
        if not isinstance(dist, Choice):
            raise ValueError(f"{key}: a grid takes `choice` (or `fixed`) values, not `{dist.type}`; list the "
                             f"values to run as a choice")
        for i, value in enumerate(dist.values):
            if value in dist.values[:i]:
                raise ValueError(f"{key}.values[{i}]: {value!r} is listed twice; a grid would run it twice")
        grid[key] = list(dist.values)
    return grid


def grid_size(grid: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in grid.values())
