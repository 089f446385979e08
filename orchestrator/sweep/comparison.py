"""How much better the sweep's pick is than the base setting, and how sure that is.

A single trial's score carries two noises: the evaluation's (a finite sample of generated images: `fid1_se`,
the bootstrap standard error) and the training seed's (docs/results.md: larger, and not measurable from one run).
A gain between two single runs can only be given with the first; it says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass
class Gain:
    """best's improvement over the base on one metric: positive is better whatever the mode."""
    metric: str
    best: float
    base: float
    value: float
    se: float | None          # evaluation noise only (independent samples): sqrt(se_best^2 + se_base^2)
    same_trial: bool = False  # the best trial is the base trial itself

    def line(self) -> str:
        if self.same_trial:
            return f"{self.metric}: the base setting is the best trial; the search found nothing better"
        err = f" +- {1.96 * self.se:.3f} (95%, evaluation noise only)" if self.se is not None else ""
        word = "better" if self.value > 0 else "worse" if self.value < 0 else "(a tie) better or worse"
        return (f"{self.metric}: best {self.best:.3f} vs base {self.base:.3f}: {abs(self.value):.3f}{err} {word} "
                f"than the base setting; one training seed each, so the seed's noise is not in this interval")


def gain_over_base(metric: str, best: float, best_se: float | None, base: float, base_se: float | None,
                   mode: str = "min", same_trial: bool = False) -> Gain:
    """The gain of `best` over `base` (positive: best is better; for `min`, base - best)."""
    if same_trial:
        return Gain(metric=metric, best=best, base=base, value=0.0, se=0.0, same_trial=True)
    value = (base - best) if mode == "min" else (best - base)
    se = math.hypot(best_se, base_se) if best_se is not None and base_se is not None else None
    return Gain(metric=metric, best=best, base=base, value=value, se=se)


@dataclass
class Interval:
    """A mean over n independent draws with its two-sided 95% Student-t interval: mean +- half."""
    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def text(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} +- {self.half:.{digits}f} (95%, n={self.n})"


def mean_interval(values: list[float]) -> Interval:
    """The mean of `values` and its 95% t interval (half-width t_{0.975, n-1} * s / sqrt(n)); n >= 2."""
    n = len(values)
    if n < 2:
        raise ValueError(f"an interval needs 2 or more values, got {n}")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean=mean, half=float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n=n)


def paired_gain(base: dict[int, float], other: dict[int, float], mode: str = "min") -> Interval | None:
    """`other`'s gain over `base` paired by seed (positive: better), over the seeds both have: the same seed gives
    both the same initial weights and data order, so the per-seed differences cancel what the seed does to both."""
    seeds = sorted(set(base) & set(other))
    if len(seeds) < 2:
        return None
    diffs = [(base[s] - other[s]) if mode == "min" else (other[s] - base[s]) for s in seeds]
    return mean_interval(diffs)
