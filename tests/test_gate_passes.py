"""scripts/gate_passes.py at tiny sizes (a smoke test: no timing is checked): a row per
thread count and W_hh size, every column filled."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_row_per_threads_and_weight_size():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gate_passes.py"), "--batch", "2", "--hidden", "16",
                           "--threads", "1", "--steps", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["16 x 16", "16 x 32", "16 x 64", "16 x 128"]
    assert all(len([cell for cell in row.split("|")[1:-1] if cell.strip()]) == 6 for row in rows)
