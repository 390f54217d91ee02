"""A preset against an outside reference script, one after the other on this machine: the
paired comparison of docs/presets.md, as a table and a plot of both validation curves
over wall time.

    python scripts/paired.py configs/shakespeare.toml --reference ../shared/reference/lstm_reference.py
    python scripts/paired.py configs/shakespeare.toml --reference ... --avx2   # both capped at AVX2
    python scripts/paired.py --run runs/paired/shakespeare --reference-json runs/paired/reference.json

The reference runs first (its own arguments: --reference-args, by default the issue's
1 x 768 LSTM for 900 s), then `charrnn train --config PRESET`; with --run and
--reference-json the two finished runs are only compared. The table has a row per charrnn
evaluation, with the reference's validation loss at the same wall time (linear between
its evaluations), and a row for each run's end. Wall time: from the start of training,
evaluations and the time plan included; the reference counts from after its set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from bench_lib import AVX2_CAP

REFERENCE_ARGS = "--layers 1 --hidden 768 --batch 32 --seq 128 --budget 900"


def main(argv=None):
    args = parse_args(argv)
    env = dict(os.environ, **AVX2_CAP) if args.avx2 else None
    out = Path("runs/paired") / ((args.preset.stem if args.preset else "run") + ("-avx2" if args.avx2 else ""))
    reference_json = args.reference_json or out / "reference.json"
    run = args.run or out / "charrnn"
    if args.run is None and run.exists():  # found now, not after the reference's 15 minutes
        sys.exit(f"{run} already holds a run: move it away, or compare it with --run {run}")
    if args.reference_json is None:
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(args.reference), *shlex.split(args.reference_args),
                        "--out", str(reference_json)], env=env, check=True)
    if args.run is None:
        subprocess.run([sys.executable, "-m", "charrnn", "train", "--config", str(args.preset), "--out", str(run),
                        "--quiet"], env=env, check=True)
    ours = [(r["elapsed"], r["step"], r["val_loss"]) for r in map(json.loads, (run / "metrics.jsonl").open())
            if "val_loss" in r]
    theirs = [(r["wall_s"], r["steps"], r["val_loss"]) for r in json.loads(reference_json.read_text())["log"]]
    if not ours or not theirs:
        sys.exit(f"no validation loss to compare in {run if not ours else reference_json}")
    print(table(ours, theirs))
    if args.plot:
        plot(ours, theirs, args.plot, title=args.title or f"{run} against {reference_json}")
        print(f"\nplot: {args.plot}", file=sys.stderr)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", type=Path, help="a configs/*.toml to train (not with --run)")
    parser.add_argument("--reference", type=Path, help="the reference script to run (not with --reference-json)")
    parser.add_argument("--reference-args", default=REFERENCE_ARGS, help=f"its arguments (default: {REFERENCE_ARGS})")
    parser.add_argument("--reference-json", type=Path, help="a finished reference run's --out file")
    parser.add_argument("--run", type=Path, help="a finished charrnn run directory")
    parser.add_argument("--avx2", action="store_true", help="cap oneDNN, MKL and torch's kernels at AVX2 in both runs")
    parser.add_argument("--plot", type=Path, help="write both validation curves over wall time to this PNG")
    parser.add_argument("--title", help="the plot's title (default: the two runs' paths)")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.preset is None):
        parser.error("give a preset to train, or --run for a finished run (one of them)")
    if (args.reference_json is None) == (args.reference is None):
        parser.error("give --reference to run the reference, or --reference-json for a finished one (one of them)")
    return args


def table(ours: list[tuple], theirs: list[tuple]) -> str:
    """Markdown: charrnn's evaluations beside the reference's loss at the same wall time,
    then each run's end. Rows are (wall seconds, step, validation loss)."""
    lines = ["| wall time | charrnn step | charrnn val loss | reference val loss | charrnn - reference |",
             "|---:|---:|---:|---:|---:|"]
    for seconds, step, loss in ours:
        at = loss_at(theirs, seconds)
        gap = "" if at is None else f"{loss - at:+.4f}"
        lines.append(f"| {seconds:.0f} s | {step:,} | {loss:.4f} | {'' if at is None else f'{at:.4f}'} | {gap} |")
    (s1, n1, l1), (s2, n2, l2) = ours[-1], theirs[-1]
    lines.append(f"| charrnn's end: {s1:.0f} s, step {n1:,} | | **{l1:.4f}** | | |")
    lines.append(f"| the reference's end: {s2:.0f} s, step {n2:,} | | | **{l2:.4f}** | |")
    return "\n".join(lines)


def loss_at(curve: list[tuple], seconds: float) -> float | None:
    """The curve's loss at `seconds`, linear between its points; None outside them."""
    for (s0, _, l0), (s1, _, l1) in zip(curve, curve[1:]):
        if s0 <= seconds <= s1:
            return l0 + (l1 - l0) * (seconds - s0) / (s1 - s0)
    return None


def plot(ours: list[tuple], theirs: list[tuple], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for curve, label in ((ours, "charrnn"), (theirs, "reference")):
        ax.plot([s for s, _, _ in curve], [loss for _, _, loss in curve], marker="o", markersize=3, label=label)
    ax.set(xlabel="wall time (s)", ylabel="validation loss (nats/char)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(top=min(2.2, max(loss for _, _, loss in ours + theirs)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
