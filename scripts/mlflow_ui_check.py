"""The MLflow UI of a run dir, checked in headless Chromium: the URL `afsweep launch` prints opens the experiment's
training runs in the "Model training" view (not MLflow 3's GenAI overview), and a trial's System metrics tab plots
its system metrics.

    .venv/bin/python scripts/mlflow_ui_check.py [--run-dir afsweep-runs] [--out mlflow-ui-check]

Starts `mlflow ui` on the run dir's store (loopback, a free port), opens both pages, screenshots them into --out
and checks their text. Exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import screenshots  # noqa: E402  (beside this script)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default="afsweep-runs")
    ap.add_argument("--out", default="mlflow-ui-check")
    args = ap.parse_args()
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking

    run_dir, out = Path(args.run_dir).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking.default_tracking_uri(run_dir)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("afsweep")
    trials = tracking.sweep_trial_runs(client, exp.experiment_id, tracking.latest_sweep(client, exp.experiment_id))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        runs_url = tracking.ui_url(base, exp.experiment_id)[len(base):]
        trial = trials[0]
        asyncio.run(screenshots(shutil.which("chromium"), base, {
            "training-runs": runs_url,
            "trial-system-metrics": f"/#/experiments/{exp.experiment_id}/runs/{trial.info.run_id}/system-metrics"
                                    "?workflowType=machine_learning"}, out,
            settle_s=10))
    finally:
        server.terminate()
        server.wait(timeout=30)
    runs_text = (out / "training-runs.txt").read_text()
    parents = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'sweep'")
    all_trials = client.search_runs([exp.experiment_id], "tags.`afsweep.kind` = 'trial'")
    trial_text = (out / "trial-system-metrics.txt").read_text()
    checks = [
        ("the printed URL opens the runs table in the 'Model training' view",
         "Model training" in runs_text and "Run Name" in runs_text and "Token usage" not in runs_text),
        ("it lists the sweeps (trials nested under them) with their dataset",
         f"{len(parents) + len(all_trials)} matching runs" in runs_text and "fashion-mnist:train" in runs_text),
        ("a trial's System metrics tab plots its system/ metrics",
         trial.info.run_name in trial_text and "cpu_utilization_percentage" in trial_text),
    ]
    for label, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {label}")
    print(f"screenshots: {out}/training-runs.png, {out}/trial-system-metrics.png")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
