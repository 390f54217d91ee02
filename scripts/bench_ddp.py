"""Is data-parallel training worth it on this machine's CPU cores? Trains the same model on
the same global batch twice, on the built-in corpus:

  1 process  x N threads   charrnn train --batch-size B               (OMP_NUM_THREADS=N)
  N processes x 1 thread   torchrun --nproc_per_node=N -m charrnn train --batch-size B/N

and prints the training speed of each (characters of the global batch per second of
training, evaluation left out) and their ratio, with the load average before and after:
other work on the machine skews both numbers. Takes about a minute at the defaults on 2 cores.

    python scripts/bench_ddp.py [--processes 2 --hidden 256 --batch-size 32 --seq-len 64 --steps 120] [train options]

Options it does not know go to both runs of `charrnn train` (e.g. --amp bf16 --dropout 0.3).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def chars_per_s(command: list[str], threads: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run([*command, "--out", str(out)], env=env, check=True, stdout=subprocess.DEVNULL)
    progress = torch.load(out / "last.pt", weights_only=True)["progress"]
    return progress["chars_seen"] / progress["elapsed"]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=120)
    args, train_options = parser.parse_known_args()
    n = args.processes
    if args.batch_size % n:
        parser.error("--batch-size must be a multiple of --processes")
    train = ["charrnn", "train", "--cell", args.cell, "--hidden", str(args.hidden), "--seq-len", str(args.seq_len),
             "--max-steps", str(args.steps), "--eval-every", str(args.steps + 1), "--device", "cpu", "--quiet",
             *train_options]

    print(f"{args.cell.upper()} hidden {args.hidden}, global batch {args.batch_size} x {args.seq_len} characters, "
          f"{args.steps} steps {' '.join(train_options)}; load average {load()} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        one = chars_per_s([sys.executable, "-m", *train, "--batch-size", str(args.batch_size)], n, Path(tmp) / "one")
        print(f"  1 process  x {n} threads: {one:9,.0f} chars/s")
        many = chars_per_s([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                            "-m", *train, "--batch-size", str(args.batch_size // n)], 1, Path(tmp) / "many")
        print(f"  {n} processes x 1 thread:  {many:9,.0f} chars/s")
    print(f"data-parallel / threads: {many / one:.2f}x; load average now {load()}")


if __name__ == "__main__":
    main()
