"""How a trial's MLflow run is closed when Tune's last result for it is older than the end it reached (a trial
restored at its final checkpoint reports nothing new): real MLflow store (sqlite)."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator import tracking
from orchestrator.trial.trainable import MlflowTrialCloser
from tests.support.stores import mlflow_store


def _run(client, exp, trial_id: str, logged_step: int) -> str:
    parent = client.create_run(exp, tags={tracking.KIND_TAG: "sweep", tracking.SWEEP_TAG: "s"}).info.run_id
    run_id = tracking.get_or_create_trial_run(client, exp, parent, "s", trial_id, trial_id, {"total_steps": 20})
    client.log_metric(run_id, "step", logged_step, step=logged_step)
    return run_id


def test_a_trial_whose_run_reached_its_end_is_completed_whatever_tunes_last_result_says(tmp_path):
    client, uri, exp = mlflow_store(tmp_path)
    ended, stopped = _run(client, exp, "t1", 20), _run(client, exp, "t2", 10)
    closer = MlflowTrialCloser(uri, exp, "s")
    for trial_id in ("t1", "t2"):   # Tune's last result: step 10 of 20 for both
        trial = SimpleNamespace(trial_id=trial_id, config={}, last_result={"step": 10, "total_steps": 20})
        closer.on_trial_complete(0, [], trial)
    assert client.get_run(ended).data.tags[tracking.STATUS_TAG] == "completed"
    assert client.get_run(stopped).data.tags[tracking.STATUS_TAG] == "pruned"
    assert client.get_run(stopped).data.tags[tracking.STOPPED_AT_TAG] == "10"
