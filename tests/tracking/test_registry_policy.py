"""The registry never loses the best model: against a real MLflow store (sqlite) and registry, with real logged
generators. `best-fid1` moves only to a trial that beats its holder on the same extractor and N (or when the
policy says always); failed, lost and untrained trials are never candidates."""

from __future__ import annotations

import itertools

import pytest

from orchestrator import tracking
from tests.support.stores import toy_store

MODEL = "afsweep-policy-test"
_ids = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return toy_store(tmp_path_factory.mktemp("registry"))


def _trial(store, sweep: str, fid1: float, *, state: str = "completed", best_step: int = 20,
           extractor: str = "fashion-mnist-cnn", n: int = 200) -> str:
    client, _, exp, ckpt = store
    parent = client.create_run(exp, tags={tracking.KIND_TAG: "sweep", tracking.SWEEP_TAG: sweep}).info.run_id
    trial_id = f"{sweep}-{next(_ids)}"
    run_id = tracking.get_or_create_trial_run(client, exp, parent, sweep, trial_id, trial_id,
                                              {tracking.EXTRACTOR_PARAM: extractor, tracking.EVAL_N_PARAM: n})
    for step, value in ((0, 480.0), (best_step, fid1)):
        client.log_metric(run_id, "fid1", value, step=step)
    client.log_metric(run_id, "fid1_best", min(fid1, 480.0), step=best_step)
    client.log_metric(run_id, "fid1_best_step", best_step if fid1 < 480.0 else 0, step=best_step)
    client.log_artifact(run_id, str(ckpt), "checkpoint")
    tracking.close_trial_run(client, run_id, state)
    return run_id


def _holder(store) -> str:
    return store[0].get_model_version_by_alias(MODEL, "best-fid1").run_id


def _promote(store, run_id: str, policy: str = "if_better") -> tracking.Promotion:
    client, uri, _, _ = store
    return tracking.promote_best(client, uri, run_id, MODEL, "fid1", policy=policy)


def test_alias_moves_only_to_a_better_comparable_model(store):
    client = store[0]
    good = _trial(store, "s1", 170.0)
    p = _promote(store, good)
    assert p.moved and _holder(store) == good

    worse = _trial(store, "s2", 185.0)
    p = _promote(store, worse)
    assert not p.moved and "not beaten" in p.reason and _holder(store) == good
    assert client.get_model_version(MODEL, p.version).run_id == worse  # registered, findable, not aliased

    other_n = _trial(store, "s3", 120.0, n=1000)  # lower, but scored at another N: FD is biased by N
    p = _promote(store, other_n)
    assert not p.moved and "not comparable" in p.reason and _holder(store) == good

    better = _trial(store, "s4", 160.0)
    p = _promote(store, better)
    assert p.moved and _holder(store) == better

    p = _promote(store, worse, policy="always")  # the user asked
    assert p.moved and _holder(store) == worse


def test_run_keeps_its_state_and_duration_after_registering(store):
    client = store[0]
    run_id = _trial(store, "s5", 150.0)
    before = client.get_run(run_id).info
    _promote(store, run_id, policy="always")
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)


def test_failed_lost_and_untrained_trials_are_never_best(store):
    client, _, exp, _ = store
    failed = _trial(store, "s6", 10.0, state="failed")
    untrained = _trial(store, "s6", 500.0)        # never beat its step-0 score: the best is the untrained net
    ok = _trial(store, "s6", 300.0, state="pruned")
    lost = _trial(store, "s6", 5.0)
    client.set_tag(lost, tracking.STATUS_TAG, "lost")
    rows = tracking.best_trials(client, exp, "fid1", "s6", top=10, finished_only=True)
    assert [r.run_id for r in rows] == [ok], [(r.run_id, r.value) for r in rows]
    running = _trial(store, "s6", 1.0)
    client.set_tag(running, tracking.STATUS_TAG, "running")
    assert [r.run_id for r in tracking.best_trials(client, exp, "fid1", "s6", top=10)] == [running, ok]
    assert [r.run_id for r in tracking.best_trials(client, exp, "fid1", "s6", top=10, finished_only=True)] == [ok]
    assert failed and untrained  # both present in MLflow, neither listed
