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


def trial_figures(client, run_id: str, total_steps: int, fault_ms: float) -> dict:
    """From the trial's own MLflow history:
    - steps redone: the steps logged before each restart beyond the step it resumed from (a lower bound by at most
      one log interval);
    - seconds added: from the last step logged before the fault to the first step logged beyond it after
      recovery, less what those steps take at the trial's healthy pace (the median seconds per step between its
      log steps before the fault; start-up and step 0 excluded)."""
    import statistics

    losses = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    steps_redone = 0
    for r in client.get_metric_history(run_id, "restarts"):
        before = [m.step for m in losses if m.timestamp < r.timestamp]
        steps_redone += max(0, max(before, default=0) - r.step)
    healthy = [m for m in losses if m.timestamp < fault_ms]
    added = float("nan")
    if len(healthy) >= 3:
        last = healthy[-1]
        back = [m for m in losses if m.timestamp >= fault_ms and m.step > last.step]
        pace = statistics.median((b.timestamp - a.timestamp) / 1000 / (b.step - a.step)
                                 for a, b in zip(healthy[1:], healthy[2:]))
        if back:
            first = back[0]
            added = (first.timestamp - last.timestamp) / 1000 - (first.step - last.step) * pace
    skipped = client.get_metric_history(run_id, "samples_skipped")
    return {"steps_redone": steps_redone, "seconds_added": added,
            "samples_skipped": int(max((m.value for m in skipped), default=0))}
