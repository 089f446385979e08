"""The decision-quality replay on a synthetic table whose truth is known: the plain search's reported number is
optimistic (the best of noisy draws, each the best of its own evaluations), the confirmed one is not, and the
confirmed pick is closer to the best. The table build itself runs as the benchmark (too long for the suite)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import decision_quality as dq


def _table(configs: int = 16, seeds: int = 6, seed_sd: float = 10.0, optimism: float = 4.0) -> list[dict]:
    """True means 60, 62, 64, ...; each seed moves a run by N(0, seed_sd); a run's fid1_best sits `optimism` plus
    evaluation noise below its re-scored value (its checkpoint was chosen on those evaluations)."""
    rng = np.random.default_rng(7)
    rows = []
    for c in range(configs):
        for s in range(seeds):
            run = 60.0 + 2.0 * c + rng.normal(0, seed_sd)
            rows.append({"config": c, "seed": s, "fid1_best": run - optimism - abs(rng.normal(0, 2)),
                         "fid1_rescored": run + rng.normal(0, 1), "cpu_s": 10.0})
    return rows


def test_replay_finds_the_optimism_of_plain_search_and_none_after_confirmation():
    result = dq.replay(_table(), replays=600, n_search=6, top=2, m=3)
    plain, conf = result["plain search"], result["search + confirmation"]
    assert plain["bias"] < -8          # the best of ~15 draws with sd 10, each 4+ below its truth
    assert abs(conf["bias"]) < 2.5     # a mean of fresh re-scores: unbiased up to the truth's own seed noise
    assert conf["regret"] < plain["regret"]
    assert conf["cpu_s"] >= plain["cpu_s"] and plain["cpu_s"] >= conf["cpu_s"] - 10   # equal CPU, one run apart


def test_plain_search_stops_at_the_budget_and_picks_the_best_single_draw():
    runs = {c: {0: {"fid1_best": v, "fid1_rescored": v, "cpu_s": 10.0}} for c, v in enumerate([50.0, 40.0, 30.0])}
    d = dq.plain_search(runs, [0, 1, 2], {0: 0, 1: 0, 2: 0}, budget=20.0)
    assert (d.pick, d.reported, d.cpu_s) == (1, 40.0, 20.0)   # the third would exceed the budget


def test_the_table_file_keeps_its_command_line_and_rows(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"command": "benchmarks/decision_quality.py build"}) + "\n"
                    + json.dumps({"config": 0, "seed": 1, "fid1_best": 1.0}) + "\n")
    assert dq.read_table(path) == [{"config": 0, "seed": 1, "fid1_best": 1.0}]


@pytest.mark.parametrize("n", [4])
def test_table_configs_start_with_the_base_setting(n):
    configs = dq.table_configs(n, steps=200)
    assert configs[0] == {} and len(configs) == n and all("alpha.k_s" in c for c in configs[1:])
    assert dq.table_configs(n, steps=200) == configs   # seeded
