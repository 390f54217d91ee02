"""Ablations of the training recipe: one factor at a time, same seed, same steps.

    python scripts/ablate.py                      # every row, in order
    python scripts/ablate.py --rows preset,torch  # some of them
    python scripts/ablate.py --steps 300          # shorter, to try it out

Each row is the shakespeare preset's model and data with the changes its name lists, all
on top of the row before it where the name says "+". Every row trains for the same number
of steps with the same seed (the learning rate follows the steps, not the clock, so a
loaded machine changes the speed column only). Prints a Markdown table for
docs/presets.md: each row's `charrnn train` command, best and final validation loss,
the epochs seen, chars/s and the validation curve.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from charrnn.training.train import TrainConfig, train
from charrnn.training.report import Reporter

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# configs/shakespeare.toml as it was before this study (the "preset" row)
BEFORE = dict(cell="lstm", hidden=512, layers=1, dropout=0.5, init="book", init_sigma=0.05, batch_size=32,
              seq_len=128, optimizer="adam", lr=3e-3, lr_schedule="cosine", warmup_steps=50, clip=1.0,
              min_lr_fraction=0.1, stream_offsets="fixed")

# name -> the changes from the row it builds on (None: from BEFORE)
ROWS = {
    "preset": (None, {}),
    "torch init": ("preset", {"init": "torch"}),
    "+ dropout 0.2": ("torch init", {"dropout": 0.2}),
    "+ random offsets": ("+ dropout 0.2", {"stream_offsets": "random"}),
    "+ cosine to 0.01": ("+ random offsets", {"min_lr_fraction": 0.01}),
    "+ forget bias 1": ("+ cosine to 0.01", {"forget_bias": 1.0}),
    "orthogonal init": ("+ cosine to 0.01", {"init": "orthogonal"}),
    "+ locked dropout": ("+ cosine to 0.01", {"locked_dropout": True}),
    "+ weight drop 0.2": ("+ cosine to 0.01", {"weight_drop": 0.2}),
    "+ weight decay 0.01 (adamw)": ("+ cosine to 0.01", {"optimizer": "adamw", "weight_decay": 0.01}),
}


def settings(name: str) -> dict:
    base, changes = ROWS[name]
    return {**(settings(base) if base else BEFORE), **changes}


def command(values: dict) -> str:
    """The `charrnn train` command line of a row."""
    parts = ["charrnn train ../shared/data/tinyshakespeare.txt"]
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


class Curve(Reporter):
    def __init__(self, name: str):
        self.name, self.points = name, []

    def evaluation(self, r):
        self.points.append(r["val_loss"])
        print(f"  {self.name}: step {r['step']:>5}  val {r['val_loss']:.4f}  {r['chars_per_s']:,.0f} chars/s",
              file=sys.stderr, flush=True)


def run(name: str, steps: int, eval_every: int, seed: int, out: Path) -> dict:
    values = {**settings(name), "max_steps": steps, "eval_every": eval_every, "seed": seed}
    curve = Curve(name)
    summary = train(TrainConfig(corpus=str(CORPUS), out=str(out / name.replace(" ", "_")), **values), curve)
    epochs = summary["chars_seen"] / (len(CORPUS.read_text()) * 0.9)
    return {"name": name, "command": command(values), "best": summary["best_val_loss"],
            "final": summary["val_loss"], "epochs": epochs, "chars_per_s": summary["chars_per_s"],
            "curve": curve.points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} is absent: the ablation needs tinyshakespeare beside the project")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, seed {args.seed}")
    print("| row | best val | final val | epochs | chars/s | val curve (every "
          f"{args.eval_every} steps) | command |\n|---|---:|---:|---:|---:|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rows.split(","):
            r = run(name.strip(), args.steps, args.eval_every, args.seed, Path(tmp))
            curve = " ".join(f"{v:.3f}" for v in r["curve"])
            print(f"| {r['name']} | {r['best']:.4f} | {r['final']:.4f} | {r['epochs']:.2f} | "
                  f"{r['chars_per_s']:,.0f} | {curve} | `{r['command']}` |", flush=True)


if __name__ == "__main__":
    main()
