"""Peak memory of training on a large corpus, against the corpus's size in bytes.

Writes a corpus of --size-mb megabytes (the built-in corpus, repeated) into a temporary
directory, then in fresh subprocesses (so each peak is its own): imports charrnn only,
trains a few steps on a 1 MB corpus (the fixed cost of Python and torch at work), trains
a few steps on the large corpus, and resumes that run (which reads the encoded ids from
the run's cache instead of the text). Prints each peak resident set size (getrusage
ru_maxrss) and its ratio to the large file's size. docs/reliability.md promises under 3x for the
default sequential sampling.

    python scripts/memory_check.py            # 200 MB, about a minute
    python scripts/memory_check.py --size-mb 20
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys
import torch
torch.set_num_threads(1)
from charrnn.train import TrainConfig, train
what, corpus, run = sys.argv[1:4]
settings = dict(corpus=corpus, out=run, hidden=32, batch_size=32, seq_len=64, eval_every=5,
                val_fraction=0.001, device="cpu")
if what == "train":
    train(TrainConfig(**settings, max_steps=5))
elif what == "resume":
    train(TrainConfig(**settings, max_steps=10), resume=run)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB
"""


def write_corpus(path: Path, size: int) -> None:
    from charrnn.data import builtin_text

    block = builtin_text().encode()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)].decode("utf-8", "ignore").encode())


def peak_rss(what: str, corpus: Path, run: Path) -> tuple[int, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(corpus), str(run)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{what} failed:\n{done.stderr}")
    return int(done.stdout.split()[-1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, small = Path(tmp) / "corpus.txt", Path(tmp) / "small.txt"
        write_corpus(corpus, int(args.size_mb * 1e6))
        write_corpus(small, 1_000_000)
        size = corpus.stat().st_size
        print(f"corpus: {size:,} bytes")
        runs = [("import", corpus, "charrnn and torch imported, nothing else"),
                ("train", small, "a 1 MB corpus: the fixed cost of training"),
                ("train", corpus, "the corpus"),
                ("resume", corpus, "the corpus, ids read from the run's cache")]
        for what, text, meaning in runs:
            peak, seconds = peak_rss(what, text, Path(tmp) / f"run-{text.stem}")
            print(f"{what:>7}: peak RSS {peak / 1e6:7.1f} MB = {peak / size:.2f}x the corpus "
                  f"({seconds:4.1f}s; {meaning})")


if __name__ == "__main__":
    main()
