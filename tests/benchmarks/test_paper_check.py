"""benchmarks/paper_check.py's read-back, without a sweep: the paired t interval against hand-computed values, the
table and ordering lines of a few synthetic trials, and the trials read from an MLflow store built by hand."""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import paper_check  # noqa: E402
from paper_check import TrialScore, method_rows, ordering_line, paired_interval  # noqa: E402


def test_paired_interval_by_hand():
    # diffs 1, 2, 3, 4: mean 2.5, sd sqrt(5/3) = 1.290994, se = sd / 2 = 0.645497, t(0.975, 3) = 3.182446
    iv = paired_interval([1.0, 2.0, 3.0, 4.0])
    assert (iv.mean, iv.n) == (2.5, 4)
    assert iv.low == pytest.approx(2.5 - 3.182446 * 0.645497, abs=1e-5) == pytest.approx(0.445740, abs=1e-5)
    assert iv.high == pytest.approx(4.554260, abs=1e-5)
    assert iv.holds()
    # diffs -3, -5, -4: mean -4, sd 1, se 1 / sqrt(3) = 0.577350, t(0.975, 2) = 4.302653: [-6.484138, -1.515862]
    iv = paired_interval([-3.0, -5.0, -4.0])
    assert (iv.low, iv.high) == (pytest.approx(-6.484138, abs=1e-5), pytest.approx(-1.515862, abs=1e-5))
    # a spread wider than the mean: the interval covers 0
    assert not paired_interval([-1.0, 2.0, 0.5]).holds()
    one = paired_interval([3.0])
    assert one.n == 1 and math.isnan(one.low) and not one.holds()


def _score(method, seed, fid1, fid2):
    return TrialScore(method, seed, f"{method}-{seed}", {"fid1": fid1, "fid2": fid2})


def test_rows_pair_by_seed_and_say_which_orderings_hold():
    scores = [_score("meanflow", s, 100.0 + s, 90.0 + s) for s in range(3)]
    scores += [_score("alphaflow", s, 95.0 + s + d, 90.5 + s + 2 * d) for s, d in zip(range(3), (0.0, 0.5, -0.5))]
    scores += [_score("imf", 0, 80.0, 70.0)]   # one seed only
    rows = {r.method: r for r in method_rows(scores, "meanflow")}
    assert rows["meanflow"].to_reference == {} and rows["meanflow"].seeds == [0, 1, 2]
    mean, std = rows["alphaflow"].stats["fid1"]
    assert mean == pytest.approx(96.0) and std == pytest.approx(statistics.stdev([95.0, 96.5, 96.5]))
    fid1 = rows["alphaflow"].to_reference["fid1"]          # diffs -5, -4.5, -5.5
    assert fid1.mean == pytest.approx(-5.0) and fid1.holds()
    fid2 = rows["alphaflow"].to_reference["fid2"]          # diffs 0.5, 1.5, -0.5
    assert fid2.mean == pytest.approx(0.5) and not fid2.holds()
    line = ordering_line(rows["alphaflow"], "meanflow")
    assert line.startswith("alphaflow vs meanflow (3 paired seeds): fid1 lower (better) by 5.00")
    assert "excludes 0: the ordering holds" in line and "fid2 higher (worse) by 0.50" in line
    assert line.endswith("includes 0: not settled")
    assert "1 paired seed(s), no interval: not settled" in ordering_line(rows["imf"], "meanflow")
    table = paper_check.format_table(list(rows.values()), "meanflow")
    assert table[0].startswith("| method | seeds | fid1 mean | fid1 std |") and len(table) == 2 + 3
    with pytest.raises(ValueError, match="--reference flow-matching: no completed trial of that method"):
        method_rows(scores, "flow-matching")


def _store(tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestrator import tracking

    run_dir = tmp_path / "runs"
    run_dir.mkdir()
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = tracking.ensure_experiment(client, "afsweep", run_dir / "mlartifacts")
    frozen = "search:\n  space:\n    method: {type: choice, values: [meanflow, alphaflow]}\n"
    parent = tracking.start_sweep_run(client, exp, "pc-1", frozen, {"num_trials": 5})
    trials = [("meanflow", 0, 100.0, "completed"), ("meanflow", 1, 102.0, "completed"),
              ("alphaflow", 0, 97.0, "completed"), ("alphaflow", 1, 98.0, "completed"),
              ("alphaflow", 2, 99.0, "failed")]
    for i, (method, seed, fid, state) in enumerate(trials):
        run_id = tracking.get_or_create_trial_run(client, exp, parent, "pc-1", f"t{i}", f"trial_{i}",
                                                  {"method": method, "seed": seed, "total_steps": 8,
                                                   tracking.EVAL_N_PARAM: 100})
        for key, value in (("fid1_best", fid), ("fid2_best", fid - 10), ("fid1_best_step", 8)):
            client.log_metric(run_id, key, value, step=8)
        tracking.close_trial_run(client, run_id, state)
    return run_dir


def test_read_back_from_mlflow(tmp_path, capsys):
    run_dir = _store(tmp_path)
    rows = {r.method: r for r in paper_check.main(["--run-dir", str(run_dir)])}   # the latest sweep
    assert rows["alphaflow"].seeds == [0, 1] and rows["alphaflow"].to_reference["fid1"].mean == pytest.approx(-3.5)
    out = capsys.readouterr().out
    assert "sweep pc-1: 4 completed trials of 5, 8 steps each" in out and "FID-100" in out
    assert "| alphaflow | 2 | 97.50 | 0.71 | 87.50 | 0.71 | -3.50 [" in out
    assert "left out: trial_4 (alphaflow, seed 2): failed" in out
    assert "alphaflow vs meanflow (2 paired seeds): fid1 lower (better) by 3.50" in out


@pytest.mark.parametrize("args, message", [
    (["--sweep", "nope"], "no sweep named 'nope'"),
    (["--reference", "imf"], "--reference imf: no completed trial of that method (methods: meanflow, alphaflow)"),
    (["--experiment", "other"], "no experiment named 'other'"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    run_dir = _store(tmp_path)
    capsys.readouterr()   # MLflow's own lines while the store was made
    with pytest.raises(SystemExit) as e:
        paper_check.main(["--run-dir", str(run_dir), *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and message in err, err


def test_no_store_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        paper_check.main(["--run-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err.strip()
    assert err.startswith("paper_check: error: ") and "no run dir there" in err and "\n" not in err


def test_class_gaussian_baseline_sits_between_real_images_and_noise(tmp_path):
    """The baseline the read-back prints: N balanced draws of each class's Gaussian score worse than N real training
    images and better than N images of noise, against the same reference statistics (digits, digits-cnn)."""
    import numpy as np

    from alphaflow.data import prepare_builtin, read_manifest
    from alphaflow.data.sources import load_builtin
    from alphaflow.metrics import ReferenceStats, frechet_distance, gaussian_stats, load_extractor
    from alphaflow.metrics.calibration import class_gaussian_sample

    images, labels = load_builtin("digits", "train")
    draws, draw_labels = class_gaussian_sample(images, labels, 50, np.random.default_rng(0))
    assert draws.shape == (500, 1, 8, 8) and draws.dtype == np.uint8 and np.bincount(draw_labels).tolist() == [50] * 10
    for c in (0, 7):   # each class's own mean, within sampling error
        assert abs(draws[draw_labels == c].mean() - images[labels == c].mean()) < 6

    url = prepare_builtin("digits", str(tmp_path / "digits"))
    base = paper_check.class_gaussian_baseline(url, 500, "digits-cnn")
    extractor, ref = load_extractor("digits-cnn"), ReferenceStats.load(read_manifest(url).fid_reference)

    def fid(x):
        mu, sigma = gaussian_stats(extractor.features(x))
        return frechet_distance(mu, sigma, ref.mu, ref.sigma)

    noise = np.random.default_rng(1).integers(0, 256, (500, 1, 8, 8)).astype(np.uint8)
    assert fid(images[:500]) < base < fid(noise)
