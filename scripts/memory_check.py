"""Peak memory of training on a large corpus, against the corpus's size in bytes.

Writes a corpus of --size-mb megabytes (the built-in corpus, repeated) and a folder of
--folder-files files making --folder-size megabytes into a temporary directory, then in
fresh subprocesses (so each peak is its own): imports charrnn only, trains a few steps on
a 1 MB corpus (the fixed cost of Python and torch at work), trains a few steps on the
large corpus and on the folder, and resumes each run (which reads the encoded ids from
the run's cache instead of the text). Prints each peak resident set size (getrusage
ru_maxrss), its ratio to the corpus's size, and the ratio of what it adds to the fixed
cost. docs/reliability.md promises under 3x for the default sequential sampling.

    python scripts/memory_check.py                  # 200 MB and 40 MB in 2,000 files, a few minutes
    python scripts/memory_check.py --size-mb 20 --folder-size 20
    python scripts/memory_check.py --size-mb 0 --folder-size 2000 --folder-files 10000   # by hand
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
from charrnn.training.train import TrainConfig, train
what, corpus, run = sys.argv[1:4]
settings = dict(corpus=corpus, out=run, hidden=32, batch_size=32, seq_len=64, eval_every=5,
                val_fraction=0.001, device="cpu")
if what == "train":
    train(TrainConfig(**settings, max_steps=5))
elif what == "resume":
    train(TrainConfig(**settings, max_steps=10), resume=run)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # Linux reports KiB
"""


def corpus_bytes(size: int, start: int = 0) -> bytes:
    """`size` bytes of the built-in corpus from `start` on (repeated as needed), cut so
    that they are whole UTF-8 characters."""
    from charrnn.corpus.text import builtin_text

    block = builtin_text().encode()
    start %= len(block)
    data = (block[start:] + block * (size // len(block) + 1))[:size]
    return data.decode("utf-8", "ignore").encode()


def write_corpus(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for start in range(0, size, 1 << 24):
            f.write(corpus_bytes(min(1 << 24, size - start), start))


def write_folder(folder: Path, size: int, files: int) -> None:
    """`files` files of size / files bytes each, in 10 subfolders, each from elsewhere in
    the built-in corpus."""
    for i in range(files):
        path = folder / f"part{i % 10}" / f"doc{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(corpus_bytes(size // files, i * 7919))


def peak_rss(what: str, corpus: Path, run: Path) -> tuple[int, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(corpus), str(run)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{what} failed:\n{done.stderr}")
    return int(done.stdout.split()[-1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200, help="the one-file corpus (0: none)")
    parser.add_argument("--folder-size", type=float, default=40, help="the folder's megabytes in all (0: none)")
    parser.add_argument("--folder-files", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, folder, small = Path(tmp) / "corpus.txt", Path(tmp) / "folder", Path(tmp) / "small.txt"
        write_corpus(small, 1_000_000)
        imported, _ = peak_rss("import", small, Path(tmp) / "run-small")
        peak, _ = peak_rss("train", small, Path(tmp) / "run-small")
        print(f"imported: peak RSS {imported / 1e6:7.1f} MB (charrnn and torch imported, nothing else)")
        print(f"   fixed: peak RSS {peak / 1e6:7.1f} MB (training on a 1 MB corpus: Python and torch at work)")
        cases = []
        if args.size_mb:
            write_corpus(corpus, int(args.size_mb * 1e6))
            cases.append((corpus, "one file", corpus.stat().st_size))
        if args.folder_size:
            write_folder(folder, int(args.folder_size * 1e6), args.folder_files)
            size = sum(path.stat().st_size for path in folder.rglob("*.txt"))
            cases.append((folder, f"a folder of {args.folder_files:,} files", size))
        for text, kind, size in cases:
            print(f"{kind}: {size:,} bytes")
            for what, meaning in (("train", "the corpus"), ("resume", "the corpus, ids read from the run's cache")):
                rss, seconds = peak_rss(what, text, Path(tmp) / f"run-{text.stem}")
                print(f"{what:>7}: peak RSS {rss / 1e6:7.1f} MB = {rss / size:.2f}x the corpus, "
                      f"{(rss - peak) / size:.2f}x above the fixed cost ({seconds:4.1f}s; {meaning})")


if __name__ == "__main__":
    main()
