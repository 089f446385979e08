"""The Ray dashboard during a sweep, checked in a real browser (headless Chromium), with Ray's token auth.

    .venv/bin/python scripts/dashboard_check.py [--out dashboard-check]

Launches a one-trial sweep (2 Ray Train workers, CPU), and while its trial trains:
- checks token auth on the dashboard API: 401 without the token, 403 with a wrong one, 200 with the right one;
- reads Ray Train's state API (`/api/train/v2/runs/v1`, what `RAY_TRAIN_ENABLE_STATE_TRACKING=1` feeds) and prints the
  running trial's workers (rank, node, pid, state);
- opens the dashboard in Chromium (the token set as the dashboard's own auth cookie) and screenshots the Actors page
  (the trial's `RayTrainWorker` actors) and the Train state API's answer, into --out.
Ray 2.60's open-source dashboard has no Train page (its bundle holds no train route): the Train state API and the
Actors page are where a trial's workers show. Exit 0 when every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser import screenshots  # noqa: E402  (beside this script)

SPEC = """
name: dashboard-check
data: {dataset: digits}
base:
  preset: tiny-cpu
  overrides: {total_steps: 3000, batch_size: 32, model.size: micro}
train: {workers: 2, eval_every: 1000, log_every: 50, eval_samples: 200}
search: {num_trials: 1, max_concurrent: 1, early_stopping: {scheduler: none}}
"""


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _running_workers(base: str, token: str) -> list[dict]:
    code, body = _get(f"{base}/api/train/v2/runs/v1", token)
    if code != 200:
        return []
    for run in json.loads(body).get("train_runs", []):
        if run.get("status") == "RUNNING" and run.get("attempts"):
            workers = run["attempts"][-1].get("workers", [])
            if workers and all(w.get("status") == "ALIVE" for w in workers):
                return [dict(w, run=run["name"]) for w in workers]
    return []


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="dashboard-check")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("dashboard_check: no chromium on PATH (Debian: apt-get install chromium)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="afsweep-dashboard-"))
    (work / "spec.yaml").write_text(SPEC)
    log = open(work / "launch.log", "w+")
    sweep = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "launch", str(work / "spec.yaml"),
                              "--run-dir", str(work / "runs")], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    checks: list[tuple[str, bool]] = []
    try:
        base = None
        deadline = time.time() + 300
        while time.time() < deadline and base is None and sweep.poll() is None:
            m = re.search(r"Ray dashboard: (http://\S+)", (work / "launch.log").read_text())
            base = m.group(1) if m else None
            time.sleep(1)
        if base is None:
            print((work / "launch.log").read_text()[-3000:])
            return 1
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        workers = []
        while time.time() < deadline and not workers and sweep.poll() is None:
            workers = _running_workers(base, token)
            time.sleep(2)
        checks.append(("Train state API lists the running trial's workers", len(workers) == 2))
        for w in workers:
            print(f"  {w['run']}: rank {w['world_rank']} on node {w['node_ip']} pid {w['pid']} {w['status']}")
        for label, tok, want in (("no token", None, 401), ("wrong token", "wrong", 403), ("the token", token, 200)):
            code, _ = _get(f"{base}/api/jobs/", tok)
            checks.append((f"API with {label}: {want}", code == want))
        asyncio.run(screenshots(chromium, base, {"actors": "/#/actors", "train-state-api": "/api/train/v2/runs/v1"},
                                out, cookies={"ray-authentication-token": token}))
        actors = (out / "actors.txt").read_text()
        pids = [str(w["pid"]) for w in workers]
        checks.append(("Actors page shows each RayTrainWorker (pid)",
                       "RayTrainWorker" in actors and all(p in actors for p in pids)))
        api = (out / "train-state-api.txt").read_text()
        checks.append(("Train state API in the browser: the run is RUNNING", '"status":"RUNNING"' in api))
    finally:
        os.killpg(sweep.pid, signal.SIGINT)
        try:
            sweep.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(sweep.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    for label, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {label}")
    print(f"screenshots: {out}/actors.png, {out}/train-state-api.png")
    return 0 if checks and all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
