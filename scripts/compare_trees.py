"""Training and sampling speed of two checkouts of charrnn, paired: each round times the
same workload under one tree, then the other, in fresh processes, so that a machine's drift
hits both alike; prints the median per-round ratio (> 1: the second tree is faster).

    python scripts/compare_trees.py /path/to/base . --rounds 5

The workload: an LSTM (--hidden, batch --batch, --seq steps) trained by its forward,
cross-entropy, backward and SGD step (the same code for both trees, only the model is
theirs), and --chars characters sampled from it, one sequence.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, sys, time
import torch
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[5]))
from charrnn.config import ModelConfig
from charrnn.model import build_model
try:
    from charrnn.corpus.vocab import Vocab
    from charrnn.generation.sample import generate
except ModuleNotFoundError:  # the flat layout of before
    from charrnn.vocab import Vocab
    from charrnn.sample import generate
hidden, batch, seq, chars = map(int, sys.argv[1:5])
vocab = Vocab(set("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?'-\n0123456789()"))
model = build_model(ModelConfig(len(vocab), "lstm", hidden, 1))
params = list(model.parameters())
X = torch.randint(len(vocab), (batch, seq + 1))
def step():
    logits, _ = model(X[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), X[:, 1:].reshape(-1))
    for p in params:
        p.grad = None
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    with torch.no_grad():
        for p in params:
            p.sub_(1e-3 * p.grad)
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(10):
    step()
train = batch * seq * 10 / (time.perf_counter() - start)
model.eval()
list(generate(model, vocab, "the ", 200, seed=0))
start = time.perf_counter()
list(generate(model, vocab, "the ", chars, seed=0))
sample = chars / (time.perf_counter() - start)
print(json.dumps({"train": train, "sample": sample}))
"""


def measure(tree: str, args) -> dict:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    done = subprocess.run([sys.executable, "-c", WORKER, str(args.hidden), str(args.batch), str(args.seq),
                           str(args.chars), str(args.threads)], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--chars", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds = []
    for _ in range(args.rounds):
        a, b = measure(args.first, args), measure(args.second, args)
        rounds.append((a, b))
    print(f"LSTM {args.hidden}, batch {args.batch} x {args.seq}, {args.threads} thread(s), {args.rounds} rounds")
    print("| workload | first (median chars/s) | second (median chars/s) | second / first (median of rounds) |")
    print("|---|---:|---:|---:|")
    for work in ("train", "sample"):
        first = statistics.median(a[work] for a, _ in rounds)
        second = statistics.median(b[work] for _, b in rounds)
        ratio = statistics.median(b[work] / a[work] for a, b in rounds)
        print(f"| {work} | {first:,.0f} | {second:,.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
