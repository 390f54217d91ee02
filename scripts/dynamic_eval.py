"""Tune dynamic evaluation on a checkpoint and measure it: the figures of
docs/dynamic-evaluation.md.

    python scripts/dynamic_eval.py runs/shakespeare/best.pt
    python scripts/dynamic_eval.py RUN --other ../shared/data/timemachine.txt --write-docs
    python scripts/dynamic_eval.py RUN --tune-chars 5000 --max-chars 20000   # a quick try

1. --dyn-lr and --dyn-decay are tuned on the last --tune-chars characters of the training
   split (never on the validation text): a grid, printed as a table, lowest loss wins.
2. With the winner: static and dynamic figures of the validation split and of --other
   (characters the model lacks are dropped, as `charrnn eval --unknown skip` does), each read
   as one stream in segments of --seq-len; the static figure is also given as `charrnn eval`
   computes it (the layout training logged), and the seconds each dynamic reading took.
3. With --write-docs, the tables replace the measured section of docs/dynamic-evaluation.md.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path

import torch

from charrnn.checkpoint import load_model
from charrnn.corpus.data import reload_corpus
from charrnn.scoring.dynamic import STATS_CHARS, DynamicSettings, dynamic_evaluate, gradient_rms
from charrnn.scoring.evaluation import evaluate, recorded_layout
from charrnn.corpus.text import read_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "dynamic-evaluation.md"
BEGIN, END = "<!-- measured: scripts/dynamic_eval.py -->", "<!-- end of measured -->"


def mean_loss(result: tuple[float, int]) -> float:
    return result[0] / result[1]


def tune(model, ids, rms, seq_len, lrs, decays) -> tuple[list[str], DynamicSettings]:
    static = mean_loss(evaluate(model, ids, batch_size=1, seq_len=seq_len))
    lines = [f"Tuning text: the last {len(ids):,} characters of the training split; static loss {static:.4f} nats/char.",
             "", "| --dyn-lr | --dyn-decay | loss (nats/char) | gain |", "|---:|---:|---:|---:|"]
    print(lines[0], flush=True)
    best = None
    for lr, decay in itertools.product(lrs, decays):
        settings = DynamicSettings(seq_len=seq_len, lr=lr, decay=decay)
        loss = mean_loss(dynamic_evaluate(model, ids, rms, settings))
        lines.append(f"| {lr:g} | {decay:g} | {loss:.4f} | {static - loss:+.4f} |")
        print(lines[-1], flush=True)
        if best is None or loss < best[0]:
            best = loss, settings
    return lines, best[1]


def measure(model, ids, rms, settings, what: str, layout: dict | None) -> str:
    static = mean_loss(evaluate(model, ids, batch_size=1, seq_len=settings.seq_len))
    started = time.perf_counter()
    dynamic = mean_loss(dynamic_evaluate(model, ids, rms, settings))
    seconds = time.perf_counter() - started
    logged = f"{mean_loss(evaluate(model, ids, **layout)):.4f}" if layout else "-"
    line = f"| {what} | {len(ids) - 1:,} | {logged} | {static:.4f} | {dynamic:.4f} | {static - dynamic:+.4f} | {seconds:.0f} |"
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--other", type=Path, default=ROOT.parent / "shared" / "data" / "timemachine.txt")
    parser.add_argument("--seq-len", type=int, default=DynamicSettings.seq_len)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4, 3e-4])
    parser.add_argument("--decays", type=float, nargs="+", default=[0.0, 1e-3, 1e-2])
    parser.add_argument("--tune-chars", type=int, default=20000)
    parser.add_argument("--max-chars", type=int, default=0, help="evaluate only the first N characters (0: all)")
    parser.add_argument("--stats-chars", type=int, default=STATS_CHARS, help="training characters for the gradient statistics")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, vocab, ckpt = load_model(args.checkpoint, "cpu")
    corpus = reload_corpus(ckpt["corpus"], cache_dir=Path(args.checkpoint).parent)
    started = time.perf_counter()
    rms = gradient_rms(model, corpus.train_ids, args.seq_len, args.stats_chars)
    print(f"gradient statistics: {time.perf_counter() - started:.1f}s", flush=True)
    tuning, best = tune(model, corpus.train_ids[-args.tune_chars :], rms, args.seq_len, args.lrs, args.decays)
    cap = slice(0, args.max_chars or None)
    other_text = read_text(args.other, "file", ckpt["corpus"].get("normalize", "none"))
    other_ids, dropped = vocab.ids_of(other_text, what=str(args.other), unknown="skip")
    results = ["", f"Chosen: --dyn-lr {best.lr:g} --dyn-decay {best.decay:g}, segments of {best.seq_len}.", "",
               "| text | characters | `charrnn eval` (logged layout) | static, one stream | dynamic | gain | dynamic s |",
               "|---|---:|---:|---:|---:|---:|---:|"]
    results.append(measure(model, corpus.val_ids[cap], rms, best, "validation split", recorded_layout(ckpt)))
    results.append(measure(model, other_ids[cap], rms, best, f"{args.other.name} ({dropped} unknown dropped)", None))
    config = ckpt["model_config"]
    setup = (f"Checkpoint {args.checkpoint} ({config['cell']}, hidden {config['hidden']}, {config['layers']} layer(s)); "
             f"losses in nats/char; {args.threads} thread(s), {platform.processor() or platform.machine()}.")
    section = "\n".join([BEGIN, "", setup, "", *tuning, *results, "", END])
    print(section)
    if args.write_docs:
        text = DOCS.read_text()
        DOCS.write_text(text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :])


if __name__ == "__main__":
    main()
