"""scripts/compare_trees.py: a tiny paired run of this tree against itself prints both
workloads with a ratio (its figures are the point of a quiet machine, not of a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_tree_against_itself_prints_both_workloads():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_trees.py"), str(ROOT), str(ROOT),
                           "--rounds", "1", "--hidden", "8", "--batch", "2", "--seq", "4", "--chars", "20"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert {"train", "sample"} <= rows.keys()
    assert all(float(rows[work].split("|")[4]) > 0 for work in ("train", "sample"))


def test_no_rounds_is_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_trees.py"), str(ROOT), str(ROOT),
                           "--rounds", "0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--rounds must be at least 1" in done.stderr
