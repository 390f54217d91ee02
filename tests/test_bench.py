"""scripts/bench.py runs and prints its tables (at tiny sizes: a smoke test, no timings checked)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_prints_markdown_tables():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--sizes", "32,4,8",
                           "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "torch " in out and "threads" in out  # the machine line
    assert "### float32 matmul peak" in out and "| 4 x 32 x 128 |" in out
    training = [line for line in out.splitlines() if line.startswith("| 32 | 4 | 8 |")]
    assert [line.split("|")[4].strip() for line in training] == ["RNN", "GRU", "LSTM"]
    assert all(line.count("|") == 13 and " MB |" in line for line in training)  # memory measured too
    assert "### Sampling" in out and "| LSTM |" in out
    assert "### Evaluation" in out  # a table, or why it was skipped
