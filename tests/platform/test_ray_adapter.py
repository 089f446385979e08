"""The private Ray entry points afsweep uses (orchestrator/platform/ray_adapter.py) exist in the pinned Ray: a Ray
upgrade that moves one fails here, by name, instead of silently bringing back the log flood or breaking cluster
joins."""

from __future__ import annotations

import importlib
import logging


def test_train_report_logger_is_where_the_adapter_looks():
    from orchestrator.platform.ray_adapter import quiet_train_report_lines, train_report_logger_name

    name = train_report_logger_name()
    assert name and name.endswith("context.py"), "Ray moved ray.train.v2._internal.execution.context"
    quiet_train_report_lines()
    assert logging.getLogger(name).level == logging.WARNING


def test_token_and_loopback_switches_exist():
    raylet = importlib.import_module("ray._raylet")
    assert callable(getattr(raylet.Config, "initialize", None)), "Ray moved ray._raylet.Config.initialize"
    constants = importlib.import_module("ray._private.ray_constants")
    assert hasattr(constants, "ENABLE_RAY_CLUSTER"), "Ray moved ray._private.ray_constants.ENABLE_RAY_CLUSTER"


def test_datasets_callback_is_where_the_adapter_looks():
    from orchestrator.platform.ray_adapter import datasets_callback_class

    assert datasets_callback_class() is not None, "Ray moved ray.train.v2._internal.callbacks.datasets"


def test_a_trial_trainer_starts_no_dataset_manager_nor_preemption_watcher(tmp_path, monkeypatch):
    """A real Ray Train run of the trainer a trial uses: it trains and reports as before, and neither helper actor
    that a trial has no use for is started (with AFSWEEP_LEAN_TRAIN=0 both are: the comparison the overhead
    benchmark measures)."""
    import ray
    import ray.train
    from ray.util.state import list_actors

    from orchestrator.platform.ray_adapter import PREEMPTION_WATCHER_ENV, skip_unused_train_actors, trainer_class

    monkeypatch.setenv(PREEMPTION_WATCHER_ENV, "unset")   # recorded, so the test leaves the environment as it was
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV)
    skip_unused_train_actors()   # as the driver does before Ray starts
    ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")  # state API
    try:
        def loop(config):
            import tempfile

            with tempfile.TemporaryDirectory() as d:   # Train V2 keeps a report's metrics with its checkpoint
                ray.train.report({"step": 1, "value": config["x"] * 2},
                                 checkpoint=ray.train.Checkpoint.from_directory(d))

        trainer = trainer_class()(loop, train_loop_config={"x": 21},
                                  scaling_config=ray.train.ScalingConfig(num_workers=1),
                                  run_config=ray.train.RunConfig(name="lean", storage_path=str(tmp_path)))
        assert trainer.fit().metrics["value"] == 42
        classes = {a.class_name for a in list_actors(limit=1000)}
        assert any("RayTrainWorker" in c for c in classes), classes   # the listing sees the run's actors
        assert not any("DatasetManager" in c or "PreemptionWatcher" in c for c in classes), classes
    finally:
        ray.shutdown()
