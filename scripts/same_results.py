"""Same seed, same settings, two source trees: identical losses, weights and greedy text.

Trains each configuration below with `charrnn train` once under each tree (PYTHONPATH),
resumes some of them for a few more steps, and compares the logged losses (exactly), every
tensor of the last checkpoint's model and optimizer state (torch.equal) and the text of
`charrnn generate` greedy, by beam search and sampled with a seed (the same text). Prints one line per configuration and exits non-zero if
any differ. Small on purpose (16 hidden units, tens of steps): it checks that a change left
the arithmetic alone, not how well anything trains.

    python scripts/same_results.py /work/wt/base . --corpus /work/shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

BASE = ["--hidden", "16", "--max-steps", "12", "--seed", "0", "--batch-size", "8", "--seq-len", "16",
        "--eval-every", "4", "--threads", "1", "--unknown", "skip", "--quiet"]
CONFIGS = {  # name -> (extra train options, resume it for a few more steps)
    "rnn": (["--cell", "rnn"], False),
    "gru": (["--cell", "gru"], False),
    "lstm": (["--cell", "lstm", "--forget-bias", "1", "--init", "orthogonal"], True),
    "gru-stacked-dropout": (["--cell", "gru", "--layers", "2", "--dropout", "0.2", "--weight-drop", "0.1"], False),
    "lstm-embedding": (["--cell", "lstm", "--embedding", "8", "--layers", "2", "--locked-dropout",
                        "--dropout", "0.1", "--init", "torch"], True),
    "rnn-bytes": (["--cell", "rnn", "--vocab", "bytes"], False),
}


def charrnn(tree: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve())}
    done = subprocess.run([sys.executable, "-m", "charrnn", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"charrnn {' '.join(args)} under {tree} failed:\n{done.stderr}")
    return done.stdout


def run(tree: Path, corpus: str, out: Path, extra: list[str], resume: bool) -> dict:
    """Losses, the last checkpoint's tensors and a greedy sample of one configuration."""
    charrnn(tree, "train", corpus, *BASE, *extra, "--out", str(out))
    if resume:
        charrnn(tree, "train", "--resume", str(out), "--max-steps", "20", "--quiet")
    losses = [(r.get("train_loss"), r.get("val_loss")) for r in map(json.loads, (out / "metrics.jsonl").open())]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    text = [charrnn(tree, "generate", "--checkpoint", str(out / "last.pt"), *how, "--length", "80", "--prefix", "Th")
            for how in (["--greedy"], ["--beam", "3"], ["--seed", "1", "--samples", "2"])]
    return {"losses": losses, "model": ckpt["model"], "optimizer": ckpt.get("optimizer"), "text": text}


def same_tensors(a, b) -> bool:
    """Equal nested structures of tensors and plain values, tensors by torch.equal."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tensors(x, y) for x, y in zip(a, b))
    return a == b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="the source tree before the change")
    parser.add_argument("after", type=Path, help="the source tree after it")
    parser.add_argument("--corpus", required=True, help="a text file (its first --chars characters are used)")
    parser.add_argument("--chars", type=int, default=6000)
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(Path(args.corpus).read_text(encoding="utf-8")[: args.chars], encoding="utf-8")
        for name, (extra, resume) in CONFIGS.items():
            got = [run(tree, str(corpus), Path(tmp) / f"{name}-{k}", extra, resume)
                   for k, tree in enumerate((args.before, args.after))]
            differ = [part for part in ("losses", "model", "optimizer", "text") if not same_tensors(got[0][part], got[1][part])]
            failed += bool(differ)
            print(f"{name:<22} {'differ: ' + ', '.join(differ) if differ else 'identical'} "
                  f"({len(got[0]['losses'])} logged losses{', resumed' if resume else ''}, "
                  f"{len(got[0]['model'])} weight tensors, greedy, beam and sampled text)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
