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


CONFIRMED_MODEL = "afsweep-confirmed-test"


def _confirmed(store, run_id: str, mean: float, half: float, n: int = 3) -> tracking.Promotion:
    client, uri, _, _ = store
    return tracking.promote_confirmed(client, uri, run_id, CONFIRMED_MODEL, "fid1", mean, half, n,
                                      f"confirmed {mean} +- {half}", {"afsweep.gain_over_base": "4"})


def test_a_confirmed_winner_takes_the_alias_only_beyond_both_intervals(store):
    """The alias rule of the confirmation stage: a new winner moves `best-fid1` only when its 95% interval lies
    wholly below the holder's; the version is registered either way, carrying its numbers (tags, description)."""
    client = store[0]
    first = _trial(store, "c1", 150.0)
    p = _confirmed(store, first, 150.0, 5.0)
    assert p.moved and p.reason == "first holder"
    mv = client.get_model_version(CONFIRMED_MODEL, p.version)
    assert (mv.tags["afsweep.confirmed_mean"], mv.tags["afsweep.confirmed_low"], mv.tags["afsweep.confirmed_high"],
            mv.tags["afsweep.confirmed_n"], mv.tags["afsweep.gain_over_base"]) == ("150", "145", "155", "3", "4")
    assert mv.description == "confirmed 150.0 +- 5.0"

    overlapping = _trial(store, "c2", 140.0)   # a lower mean, but [138, 148] reaches into [145, 155]
    p = _confirmed(store, overlapping, 143.0, 5.0)
    assert not p.moved and "does not beat version" in p.reason and "beyond both intervals" in p.reason
    assert client.get_model_version_by_alias(CONFIRMED_MODEL, "best-fid1").run_id == first
    assert client.get_model_version(CONFIRMED_MODEL, p.version).run_id == overlapping   # registered all the same

    clear = _trial(store, "c3", 130.0)         # [126, 134] lies wholly below [145, 155]
    p = _confirmed(store, clear, 130.0, 4.0)
    assert p.moved and "beats version" in p.reason
    assert client.get_model_version_by_alias(CONFIRMED_MODEL, "best-fid1").run_id == clear


def test_a_confirmed_winner_against_a_holder_never_confirmed(store):
    """A holder from a sweep without confirmation has one draw and no interval: its score is a point."""
    client, uri, _, _ = store
    single = _trial(store, "u1", 120.0)
    tracking.promote_best(client, uri, single, CONFIRMED_MODEL + "-u", "fid1")
    above = _trial(store, "u2", 110.0)
    p = tracking.promote_confirmed(client, uri, above, CONFIRMED_MODEL + "-u", "fid1", 115.0, 6.0, 3, "d", {})
    assert not p.moved and "single score 120" in p.reason      # 115 + 6 = 121 is not below 120
    below = _trial(store, "u3", 100.0)
    p = tracking.promote_confirmed(client, uri, below, CONFIRMED_MODEL + "-u", "fid1", 105.0, 6.0, 3, "d", {})
    assert p.moved
