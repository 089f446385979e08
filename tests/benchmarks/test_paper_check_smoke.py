"""sweeps/paper_check.yaml at a toy size, for real: `afsweep launch` runs a 2 methods x 2 seeds grid (Ray Tune +
Optuna's grid sampler, Ray Train, MLflow), then benchmarks/paper_check.py reads it back and prints the table."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import paper_check  # noqa: E402

pytestmark = pytest.mark.slow
SPEC = Path(__file__).resolve().parents[2] / "sweeps" / "paper_check.yaml"
TOY = ["search.space.method.values=[meanflow, alphaflow]", "search.space.seed.values=[0, 1]",
       "search.max_concurrent=2", "base.overrides.total_steps=4", "base.overrides.batch_size=16",
       "base.overrides.model.size=micro", "train.workers=1", "train.eval_every=4", "train.log_every=2",
       "train.eval_samples=100"]


def test_paper_check_grid_sweep_reads_back(fashion_manifest, tmp_path, capsys):
    run_dir = tmp_path / "runs"
    sets = [f"data.manifest={fashion_manifest}", "data.dataset=null", *TOY]
    res = CliRunner().invoke(main, ["launch", str(SPEC), "--run-dir", str(run_dir),
                                    *[arg for s in sets for arg in ("--set", s)]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "4 trials: 4 completed" in res.output, res.output
    assert "a grid over method, seed, every combination once" in res.output
    capsys.readouterr()

    rows = paper_check.main(["--run-dir", str(run_dir)])
    out = capsys.readouterr().out
    assert [r.method for r in rows] == ["meanflow", "alphaflow"]   # the spec's order
    for r in rows:
        assert r.seeds == [0, 1]
        assert all(math.isfinite(v) and v > 0 for m in ("fid1", "fid2") for v in r.stats[m]), r
    diff = rows[1].to_reference["fid1"]
    assert diff.n == 2 and all(math.isfinite(v) for v in (diff.mean, diff.low, diff.high))
    table = [ln for ln in out.splitlines() if ln.startswith("| ")]
    assert len(table) == 3 and table[1].startswith("| meanflow | 2 |") and table[2].startswith("| alphaflow | 2 |")
    assert "reference" in table[1] and "nan" not in "".join(table)
    assert "alphaflow vs meanflow (2 paired seeds): fid1 " in out
    assert "4 completed trials of 4, 4 steps each" in out and "left out" not in out
    (base,) = [ln for ln in out.splitlines() if ln.startswith("per-class Gaussian baseline (fashion-mnist")]
    assert "FID-100, fashion-mnist-cnn): " in base and 0 < float(base.rsplit(" ", 1)[1]) < 1000
    # the grid's trials are ordinary sweep trials: best names their method and seed, status counts them
    best = CliRunner().invoke(main, ["best", "--json", "--run-dir", str(run_dir)])
    assert best.exit_code == 0, best.output
    (top,) = json.loads(best.output)
    assert set(top["params"]) == {"method", "seed"} and top["params"]["method"] in ("meanflow", "alphaflow")
    status = CliRunner().invoke(main, ["status", "--run-dir", str(run_dir)])
    assert status.exit_code == 0 and "4 trials (4 completed)" in status.output, status.output
