"""What survives which fault: runs the fault tests (each causes its fault for real) and prints their figures.

    python benchmarks/faults.py [-k EXPR]     # about 15 minutes on 2 cores; nothing else should run meanwhile

Each test of the `faults` marker (tests/faults/: test_faults.py, test_cluster.py, test_fault_s3.py) measures its
own figures from MLflow and the sweep's output and records one row (tests/support/fault_table.py); this script runs
them in one pytest session with AFSWEEP_FAULT_TABLE set and prints the table:

    fault | trials completed | steps redone | MLflow runs lost / duplicated | samples skipped | seconds added

steps redone: steps a restarted worker group trained again (a lower bound by at most one log interval).
seconds added: the trial's wall seconds beyond its own healthy pace before the fault, over all its steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("fault", "trials completed", "steps redone", "MLflow runs lost / duplicated", "samples skipped",
           "seconds added", "wall_s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default=None, help="only the fault tests matching this pytest expression")
    args = ap.parse_args()
    table = Path(tempfile.mkdtemp(prefix="afsweep-faults-")) / "faults.jsonl"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "faults", "tests"]
    if args.k:
        cmd += ["-k", args.k]
    rc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "AFSWEEP_FAULT_TABLE": str(table)}).returncode
    rows = [json.loads(line) for line in table.read_text().splitlines()] if table.exists() else []
    print_table(rows)
    if rc != 0:
        print(f"faults: pytest exited {rc}: the rows above are the tests that passed")
    return rc


def print_table(rows: list[dict]) -> None:
    cells = [[str(r.get(c, "-")) if c != "wall_s" else f"{r.get(c, 0):.0f}" for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(COLUMNS)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
