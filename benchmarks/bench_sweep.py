"""What the sweep benchmarks share: their command line (trials, steps, evaluation cadence, run dir) and one
sweep launched from a spec text over the bundled data set, with its MLflow client and experiment."""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def sweep_args(trials: int, steps: int, eval_every: int, prefix: str) -> tuple[argparse.Namespace, Path, str]:
    """(args, run dir, manifest URL of the prepared fashion-mnist latents)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=trials)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--eval-every", type=int, default=eval_every)
    ap.add_argument("--run-dir", default=None)
    args = ap.parse_args()

    from alphaflow.data import prepare_builtin

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix=prefix))
    return args, run_dir, prepare_builtin("fashion-mnist", str(run_dir / "data" / "fashion-mnist"))


@dataclass
class SweepRun:
    spec: object
    outcome: object
    client: object
    experiment_id: str
    wall_s: float


def run_sweep(run_dir: Path, name: str, spec_text: str) -> SweepRun:
    """Write the spec to <run_dir>/<name>.yaml, launch it in this process and time it."""
    from orchestrator import tracking
    from orchestrator.spec import load_spec
    from orchestrator.sweep.driver import launch

    path = run_dir / f"{name}.yaml"
    path.write_text(spec_text)
    spec = load_spec(path)
    t0 = time.perf_counter()
    outcome = launch(spec, spec_text, run_dir=run_dir, echo=lambda *a: None)
    wall = time.perf_counter() - t0
    client = tracking.client_for(outcome.tracking_uri)
    return SweepRun(spec, outcome, client, client.get_experiment_by_name(spec.tracking.experiment).experiment_id,
                    wall)
