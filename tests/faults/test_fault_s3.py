"""The S3 server stopped for 30 s mid-trial, with the data, Ray Tune's state and Ray Train's checkpoints all in S3.

The shard reads (alphaflow.data.storage: transient errors retried for AFSWEEP_S3_OUTAGE_S) and the checkpoint
uploads (orchestrator.platform.places.storage_filesystem: AWS standard retries, ~2 min) wait for the server; the trial
completes, every log step is in MLflow once, and no sample is skipped.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.support.fault_table import record, trial_figures
from tests.support.s3_fixtures import start_weed, stop_weed
from tests.support.sweep_proc import launch, trial_runs, wait, wait_for_step

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.faults]

SPEC = """
name: s3-outage
data: {{manifest: {manifest}}}
base:
  preset: tiny-cpu
  overrides: {{total_steps: 60, batch_size: 32, model.size: micro, alpha.k_e: 0.5}}
train: {{workers: 2, eval_every: 30, log_every: 5, eval_samples: 200, checkpoint_every: 10}}
search: {{num_trials: 1, max_concurrent: 1, early_stopping: {{scheduler: none}}}}
run: {{storage: "{storage}"}}
"""


def test_the_s3_server_down_for_30_s_mid_trial_loses_nothing(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from alphaflow.data import prepare_builtin, storage

    server = start_weed(tmp_path / "weed", "afsweep-outage", "outage-key", "outage-secret-" + uuid.uuid4().hex[:6])
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        storage.reset_clients()
        manifest = prepare_builtin("digits", f"s3://{server.bucket}/digits")
        run_dir = tmp_path / "runs"
        uri = f"sqlite:///{run_dir / 'mlflow.db'}"
        t0 = time.time()
        proc, log_path = launch(tmp_path, SPEC.format(manifest=manifest, storage=f"s3://{server.bucket}/runs"))
        stopped_ms = None
        deadline = time.time() + 900
        try:
            if wait_for_step(proc, log_path, lambda: MlflowClient(tracking_uri=uri), 15, deadline) is not None:
                stopped_ms = time.time() * 1000
                stop_weed(server)
                time.sleep(30)
                server = start_weed(server.data_dir, server.bucket, server.access_key, server.secret_key,
                                    ports=server.ports)
        finally:
            wait(proc, deadline - time.time())
        out = log_path.read_text()
        assert stopped_ms, "the trial never logged step 15: " + out[-3000:]
        assert proc.returncode == 0, out[-4000:]
        assert "1 trials: 1 completed" in out, out[-3000:]
        client = MlflowClient(tracking_uri=uri)
        runs = trial_runs(client)
        assert len(runs) == 1 and runs[0].data.tags["afsweep.status"] == "completed"
        run_id = runs[0].info.run_id
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(5, 61, 5))
        fig = trial_figures(client, run_id, stopped_ms)
        assert fig["samples_skipped"] == 0
        record("S3 server stopped 30 s mid-trial (data, Tune state, checkpoints in S3)", "1 / 1",
               fig["steps_redone"], 0, 0, fig["samples_skipped"], fig["seconds_added"], wall_s=time.time() - t0)
    finally:
        stop_weed(server)
        storage.reset_clients()
