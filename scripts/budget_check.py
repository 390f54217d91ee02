"""Does a --max-time run end on its budget? (issue #25)

For each budget, runs `charrnn train CORPUS --max-time T` (LSTM 256, --threads 1) twice:
on a quiet machine, and with busy processes (pure-Python loops) started a third of the
way into the run's budget, from the moment its start line appears (so after the plan's
first measurement, which the budget includes). It prints each run's budget, the time
the run reports (`done: N steps in X s`: from set-up to after the last evaluation and
checkpoint; starting Python and reading the corpus come before it) and the error.

    python scripts/budget_check.py                          # 40 s and 60 s, quiet and busy
    python scripts/budget_check.py --budgets 30 --busy 0    # one quiet run of 30 s

Run it on an otherwise idle machine: other work there is load the quiet runs count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--cell", "lstm", "--hidden", "256", "--threads", "1"]
DONE = re.compile(r"^done: (\d+) steps in ([\d.]+)s")


def busy_loops(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def timed_run(corpus: str, seconds: float, busy: int, train_args: list[str], out: Path) -> tuple[int, float]:
    """One `charrnn train` run with a budget of `seconds`, with `busy` loops started a
    third of the way in: (its steps, its reported seconds)."""
    command = [sys.executable, "-m", "charrnn", "train", corpus, *MODEL, *train_args,
               "--max-time", f"{seconds:g}s", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    loops: list[subprocess.Popen] = []
    timer = threading.Timer(seconds / 3, lambda: loops.extend(busy_loops(busy)))
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = None
    try:
        for line in process.stdout:
            if line.startswith("training a ") and busy:
                timer.start()
            done = DONE.match(line) or done
        process.wait()
    finally:
        timer.cancel()
        for loop in loops:
            loop.kill()
            loop.wait()
    if process.returncode or not done:
        raise SystemExit(f"charrnn train failed (exit {process.returncode}): {' '.join(command)}")
    return int(done.group(1)), float(done.group(2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default="/work/shared/data/tinyshakespeare.txt")
    parser.add_argument("--budgets", type=float, nargs="+", default=[40.0, 60.0], help="seconds")
    parser.add_argument("--busy", type=int, default=2, help="busy processes for the second run of each (0: none)")
    parser.add_argument("--train-args", default="", help="more options for charrnn train, in one string")
    args = parser.parse_args(argv)
    if not Path(args.corpus).is_file():
        raise SystemExit(f"no corpus at {args.corpus}")
    conditions = [("quiet", 0)] + ([(f"{args.busy} busy from 1/3", args.busy)] if args.busy else [])
    print(f"{'budget':>8} | {'machine':<16} | {'steps':>6} | {'reported':>9} | {'error':>7}")
    with tempfile.TemporaryDirectory() as where:
        for seconds in args.budgets:
            for name, busy in conditions:
                out = Path(where) / f"run-{seconds:g}-{busy}"
                steps, took = timed_run(args.corpus, seconds, busy, args.train_args.split(), out)
                print(f"{seconds:>7g}s | {name:<16} | {steps:>6} | {took:>8.1f}s | {100 * (took / seconds - 1):>+6.1f}%",
                      flush=True)


if __name__ == "__main__":
    main()
