"""The figures each fault test measures, for the table `benchmarks/faults.py` prints.

A fault test calls `record(...)` with what it measured; the row goes to the JSON-lines file named by
AFSWEEP_FAULT_TABLE when that is set (the benchmark sets it), and nowhere otherwise.
"""

from __future__ import annotations

import json
import os

COLUMNS = ("fault", "trials completed", "steps redone", "MLflow runs lost / duplicated", "samples skipped",
           "seconds added")


def record(fault: str, completed: str, steps_redone: int | str, runs_lost: int, runs_duplicated: int,
           samples_skipped: int | str, seconds_added: float | str, **extra) -> None:
    row = {"fault": fault, "trials completed": completed, "steps redone": steps_redone,
           "MLflow runs lost / duplicated": f"{runs_lost} / {runs_duplicated}", "samples skipped": samples_skipped,
           "seconds added": seconds_added if isinstance(seconds_added, str) else round(seconds_added), **extra}
    path = os.environ.get("AFSWEEP_FAULT_TABLE")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def trial_figures(client, run_id: str, fault_ms: float) -> dict:
    """From the trial's own MLflow history:
    - steps redone: the steps logged before each restart beyond the step it resumed from (a lower bound by at most
      one log interval);
    - seconds added: over the log intervals that end after the fault, the time beyond twice what their steps take
      at the trial's median pace (jitter stays below that; an interval holding a restart or a wait does not).
      Intervals ending at an evaluation are left out (the evaluation's own time). A metric's timestamp is taken
      before it is sent, so a wait for a server shows in the interval after the one it blocked."""
    import statistics

    losses = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    steps_redone = 0
    for r in client.get_metric_history(run_id, "restarts"):
        before = [m.step for m in losses if m.timestamp < r.timestamp]
        steps_redone += max(0, max(before, default=0) - r.step)
    evaluated = {m.step for m in client.get_metric_history(run_id, "fid1")}
    pairs = [(a, b) for a, b in zip(losses, losses[1:]) if b.step not in evaluated]
    added = float("nan")
    if pairs:
        pace = statistics.median((b.timestamp - a.timestamp) / 1000 / (b.step - a.step) for a, b in pairs)
        added = 0.0
        for a, b in pairs:
            took, expected = (b.timestamp - a.timestamp) / 1000, (b.step - a.step) * pace
            if b.timestamp >= fault_ms and took > 2 * expected:
                added += took - expected
    skipped = client.get_metric_history(run_id, "samples_skipped")
    return {"steps_redone": steps_redone, "seconds_added": added,
            "samples_skipped": int(max((m.value for m in skipped), default=0))}
