"""benchmarks/paper_check.py at a toy size: every configuration trains, is scored, and lands in the table."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import paper_check  # noqa: E402


def test_paper_check_toy(fashion_manifest, capsys):
    data_dir = str(Path(fashion_manifest).parent)
    results = paper_check.main(["--steps", "4", "--seeds", "2", "--eval-n", "60", "--batch-size", "16",
                                "--configs", "alphaflow,meanflow-beta", "--data-dir", data_dir, "--threads", "2"])
    assert [(r.config, r.seed) for r in results] == [("alphaflow", 0), ("meanflow-beta", 0),
                                                    ("alphaflow", 1), ("meanflow-beta", 1)]
    for r in results:
        assert not r.error
        assert math.isfinite(r.fid1) and r.fid1 > 0 and math.isfinite(r.fid2) and r.fid2 > 0
    # different seeds train different networks
    assert results[0].fid1 != results[2].fid1
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| alphaflow ") or line.startswith("| meanflow-beta ")]
    assert len(table) == 2
    assert "summary (lowest mean FID): fid1: best" in out


def test_paper_check_rejects_unknown_config(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        paper_check.main(["--configs", "alphaflow,nope", "--data-dir", str(tmp_path)])
    assert "unknown nope" in capsys.readouterr().err
