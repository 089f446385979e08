"""The non-dominated trials of a sweep on several objectives, read from MLflow, and their plot.

A trial's point is what the search was told for it (orchestrator/spec/objectives.py): each score's best so far
(`fid1_best`) and each cost's total (`wall_s`). Failed, lost and untrained trials (best at step 0) have no point,
as they are never a best trial either. Points are numbered 1..K in the order `afsweep best --pareto` prints them
(by the first objective), the numbers `--pick` takes and the plot labels.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from orchestrator import tracking
from orchestrator.spec.objectives import SCORES, told_key

PARETO_PNG = "pareto.png"
PARETO_JSON = "pareto.json"


@dataclass
class Point:
    run_id: str
    run_name: str
    sweep: str
    values: dict[str, float]          # objective -> the trial's told value
    params: dict[str, str]
    model_uri: str | None = None
    pick: int | None = None           # its number on the front (1-based), None off it


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if mode == "max":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """The indices of the non-dominated points, in input order (equal points are all kept: neither dominates)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]


def _point_of(run, objectives: dict[str, str], finished_only: bool) -> Point | None:
    metrics = run.data.metrics
    for name in objectives:
        if name in SCORES:
            if not tracking.is_candidate(run, name, finished_only):
                return None
        elif not math.isfinite(metrics.get(name, math.nan)):
            return None
    return Point(run_id=run.info.run_id, run_name=run.info.run_name, sweep=run.data.tags.get(tracking.SWEEP_TAG, ""),
                 values={name: metrics[told_key(name)] for name in objectives}, params=dict(run.data.params))


def sweep_points(client, experiment_id: str, sweep: str | None, objectives: dict[str, str],
                 finished_only: bool = False) -> tuple[list[Point], list[Point]]:
    """(every trial with a point, the front sorted by the objectives in order, numbered from 1). `sweep` None:
    every sweep of the experiment."""
    runs = tracking.sweep_trial_runs(client, experiment_id, sweep)
    points = [p for p in (_point_of(r, objectives, finished_only) for r in runs) if p is not None]
    modes = list(objectives.values())
    front = [points[i] for i in pareto_front([list(p.values.values()) for p in points], modes)]
    sign = [1 if m == "min" else -1 for m in modes]
    front.sort(key=lambda p: [s * v for s, v in zip(sign, p.values.values())])
    primary = next(m for m in objectives if m in SCORES)
    for i, p in enumerate(front, 1):
        p.pick = i
        p.model_uri = tracking.registered_uri_for_run(client, p.run_id, primary)
    return points, front


def point_dict(p: Point) -> dict:
    """A front point as `best --pareto --json` prints it (and pareto.json holds it): params as the values they were."""
    swept = [k for k in p.params.get("swept", "").split(",") if k]
    return {"pick": p.pick, "run_id": p.run_id, "run_name": p.run_name, "sweep": p.sweep,
            "objectives": dict(p.values), "params": {k: tracking.param_value(p.params.get(k)) for k in swept},
            "model_uri": p.model_uri}


def pareto_png(points: list[Point], front: list[Point], objectives: dict[str, str], path: str, title: str = "") -> str:
    """Every pair of objectives: each trial a grey dot, the front in red with its numbers (what --pick takes)."""
    matplotlib.use("Agg")

    names = list(objectives)
    pairs = list(itertools.combinations(range(len(names)), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.5), squeeze=False)
    on_front = {p.run_id for p in front}
    for ax, (i, j) in zip(axes[0], pairs):
        xi, yj = names[i], names[j]
        rest = [p for p in points if p.run_id not in on_front]
        ax.scatter([p.values[xi] for p in rest], [p.values[yj] for p in rest], c="0.6", s=25, label="trials")
        ax.scatter([p.values[xi] for p in front], [p.values[yj] for p in front], c="C3", s=40, label="Pareto front")
        for p in front:
            ax.annotate(f"#{p.pick}", (p.values[xi], p.values[yj]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        if len(names) == 2 and len(front) > 1:  # the front of two objectives as its staircase
            ordered = sorted(front, key=lambda p: p.values[xi])
            ax.step([p.values[xi] for p in ordered], [p.values[yj] for p in ordered], where="post", c="C3", lw=0.8)
        ax.set(xlabel=f"{told_key(xi)} ({objectives[xi]})", ylabel=f"{told_key(yj)} ({objectives[yj]})")
        ax.legend(fontsize=7)
    fig.suptitle(title or f"Pareto front: {len(front)} of {len(points)} trials")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def log_front(client, parent_run_id: str, experiment_id: str, sweep: str, objectives: dict[str, str]) -> list[Point]:
    """At the end of a multi-objective sweep: the front as `pareto.png` and `pareto.json` on the parent run, and
    its size as the metric `pareto_size`."""
    points, front = sweep_points(client, experiment_id, sweep, objectives, finished_only=True)
    with tempfile.TemporaryDirectory(prefix="afsweep-pareto-") as d:
        if points:
            pareto_png(points, front, objectives, str(Path(d) / PARETO_PNG), title=f"{sweep}: Pareto front, "
                       f"{len(front)} of {len(points)} trials")
        (Path(d) / PARETO_JSON).write_text(json.dumps([point_dict(p) for p in front], indent=2))
        for f in sorted(Path(d).iterdir()):
            client.log_artifact(parent_run_id, str(f))
    client.log_metric(parent_run_id, "pareto_size", float(len(front)))
    return front
