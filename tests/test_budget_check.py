"""scripts/budget_check.py with a tiny model and budget (a smoke test: no figure is
checked): a row per budget and machine, each with the run's steps, time and error."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import make_text

ROOT = Path(__file__).resolve().parents[1]


def test_a_row_per_budget_quiet_and_busy(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(3000))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "budget_check.py"), "--corpus", str(corpus),
                           "--budgets", "1.5", "--busy", "1", "--train-args",
                           "--hidden 8 --batch-size 4 --seq-len 16 --eval-every 20"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.strip().startswith("1.5s |")]
    assert [row.split("|")[1].strip() for row in rows] == ["quiet", "1 busy from 1/3"], done.stdout
    for row in rows:
        steps, took, error = (cell.strip() for cell in row.split("|")[2:])
        assert int(steps) > 0 and re.fullmatch(r"[\d.]+s", took) and re.fullmatch(r"[+-][\d.]+%", error)
        # against the budget, from the run's time before it was rounded to 0.1 s
        assert abs(float(error[:-1]) - 100 * (float(took[:-1]) / 1.5 - 1)) <= 100 * 0.05 / 1.5 + 0.05
