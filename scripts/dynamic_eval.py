"""Tune dynamic evaluation on a checkpoint and measure it: the figures of
docs/dynamic-evaluation.md.

    python scripts/dynamic_eval.py runs/shakespeare/best.pt
    python scripts/dynamic_eval.py RUN --other ../shared/data/timemachine.txt --write-docs
    python scripts/dynamic_eval.py RUN --tune-chars 2000 --max-chars 20000   # a quick try

1. --dyn-lr and --dyn-decay are tuned as `charrnn eval --dynamic` tunes them
   (charrnn.scoring.dynamic.tune, the same candidates, without its time bound) on the last
   --tune-chars characters of the training text before the validation text: a table;
   the lowest loss wins if it beats static, else the static figure stands (lr 0).
2. With the winner: static and dynamic figures of the validation split and of --other
   (characters the model lacks are dropped, as `charrnn eval --unknown skip` does), each read
   as one stream in segments of --seq-len; the static figure is also given as `charrnn eval`
   computes it (the layout training logged), and the seconds each dynamic reading took.
3. With --write-docs, the tables replace the measured section of docs/dynamic-evaluation.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch

from charrnn.storage.load import load_model
from charrnn.corpus.data import reload_corpus
from charrnn.config import DYNAMIC_DECAYS, DYNAMIC_LRS, TUNE_CHARS, DynamicSettings
from charrnn.scoring.dynamic import STATS_CHARS, dynamic_evaluate, gradient_rms, training_tail, tune
from charrnn.scoring.evaluation import evaluate, recorded_layout
from charrnn.corpus.text import read_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "dynamic-evaluation.md"
BEGIN, END = "<!-- measured: scripts/dynamic_eval.py -->", "<!-- end of measured -->"


def mean_loss(result: tuple[float, int]) -> float:
    return result[0] / result[1]


def tuning_table(model, ids, rms, seq_len, lrs, decays) -> tuple[list[str], DynamicSettings | None]:
    """charrnn.scoring.dynamic.tune on `ids` (as `eval --dynamic` tunes, without its time bound),
    as a table; the winner, or None where no candidate beat static."""
    def heard(settings, loss, static):
        print(f"| {settings.lr:g} | {settings.decay:g} | {loss:.4f} | {static - loss:+.4f} |", flush=True)

    tuning = tune(model, ids, rms, seq_len, lrs, decays, seconds=math.inf, on_result=heard)
    lines = [f"Tuning text: the last {tuning.chars:,} characters of the training text before the validation text; "
             f"static loss {tuning.static:.4f} nats/char.",
             "", "| --dyn-lr | --dyn-decay | loss (nats/char) | gain |", "|---:|---:|---:|---:|"]
    lines += [f"| {s.lr:g} | {s.decay:g} | {loss:.4f} | {tuning.static - loss:+.4f} |" for s, loss in tuning.tried]
    return lines, tuning.chosen


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
    parser.add_argument("--lrs", type=float, nargs="+", default=list(DYNAMIC_LRS))
    parser.add_argument("--decays", type=float, nargs="+", default=list(DYNAMIC_DECAYS), help="the first with each rate, "
                        "then the others with the best rate")
    parser.add_argument("--tune-chars", type=int, default=TUNE_CHARS)
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
    tail = training_tail(corpus.train_ids, corpus.source, args.tune_chars)
    print(f"tuning on the last {len(tail) - 1:,} characters of the training text:", flush=True)
    tuning, best = tuning_table(model, tail, rms, args.seq_len, args.lrs, args.decays)
    chosen = (f"Chosen: --dyn-lr {best.lr:g} --dyn-decay {best.decay:g}, segments of {best.seq_len}." if best else
              "No candidate beat static on the tuning text: `eval --dynamic` reports the static figure (lr 0 below).")
    best = best or DynamicSettings(seq_len=args.seq_len, lr=0.0)
    cap = slice(0, args.max_chars or None)
    other_text = read_text(args.other, "file", ckpt["corpus"].get("normalize", "none"))
    other_ids, dropped = vocab.ids_of(other_text, what=str(args.other), unknown="skip")
    results = ["", chosen, "",
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
