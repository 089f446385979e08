"""What a sweep optimises and the one value of each trial the search learns from.

Optuna's told value, ASHA's rung comparisons, `afsweep best` and the registry all read the same key of a trial: a
score's best so far (`fid1_best`: the checkpoint the registry keeps is the one that scored it), and a cost's
running total (`wall_s`: what the trial has spent, which only grows). No heavy imports: the spec, the worker and the
CLI all use this module.
"""

from __future__ import annotations

import math
from typing import Literal

# image-quality scores, lower is better: the trial is judged by its best evaluation so far
SCORES = ("fid1", "fid2")
# what the trial has cost so far (running totals the worker reports with every evaluation)
COSTS = ("wall_s", "cpu_s", "gpu_s")
ObjectiveName = Literal["fid1", "fid2", "wall_s", "cpu_s", "gpu_s"]
Mode = Literal["min", "max"]


def told_key(metric: str) -> str:
    """The reported key that stands for `metric` in the search: `fid1` -> `fid1_best`, a cost as it is."""
    return f"{metric}_best" if metric in SCORES else metric


def new_best() -> dict:
    """The running best a trial starts with (saved in its checkpoints, so a restarted trial keeps it)."""
    return {"fid1": math.inf, "fid2": math.inf, "fid1_step": 0, "fid2_step": 0}


def update_best(best: dict, scores: dict[str, float], step: int) -> bool:
    """Fold one evaluation into `best` and add the `<score>_best`, `<score>_best_step` and (when the evaluation
    has one) `<score>_best_se` keys to `scores` (what Tune, Optuna, ASHA and MLflow read): the best evaluation's
    own standard error travels with it. True when fid1 improved: the checkpoint to keep in MLflow."""
    improved = scores["fid1"] < best["fid1"]
    for name in SCORES:
        if scores[name] < best[name]:
            best[name], best[f"{name}_step"] = scores[name], step
            best[f"{name}_se"] = scores.get(f"{name}_se")
        scores[f"{name}_best"], scores[f"{name}_best_step"] = best[name], best[f"{name}_step"]
        if best.get(f"{name}_se") is not None:
            scores[f"{name}_best_se"] = best[f"{name}_se"]
    return improved


def search_objectives(search) -> dict[str, str]:
    """metric -> mode of what Optuna optimises: a spec's `search.objectives`, else its one `search.metric`."""
    return dict(search.objectives) or {search.metric: search.mode}


def format_objectives(objectives: dict[str, str]) -> str:
    """`fid1:min,wall_s:min`: how a sweep's objectives are recorded on its parent run (param `objectives`)."""
    return ",".join(f"{m}:{mode}" for m, mode in objectives.items())


def parse_objectives(text: str, where: str = "--objectives") -> dict[str, str]:
    """`fid1,wall_s` or `fid1:min,wall_s:max` (min when not said) -> {metric: mode}; a bad one is one ValueError
    line naming it."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        name, _, mode = part.partition(":")
        mode = mode or "min"
        if name not in SCORES + COSTS:
            raise ValueError(f"{where}: unknown objective {name!r} (one of {', '.join(SCORES + COSTS)})")
        if mode not in ("min", "max"):
            raise ValueError(f"{where}: {part!r}: the mode is min or max")
        out[name] = mode
    if len(out) < 2:
        raise ValueError(f"{where}: {text!r}: a Pareto front needs two or more objectives")
    return out
