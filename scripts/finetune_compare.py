"""Fine-tuning against training from scratch for the same time, and against the model as it
was: the measurement of issue 26, as a table of validation losses on the new text.

    charrnn train --config configs/shakespeare.toml /work/shared/data/tinyshakespeare.txt --max-time 3m --out runs/shakespeare-3m
    python scripts/finetune_compare.py runs/shakespeare-3m /work/shared/data/timemachine.txt --config configs/shakespeare.toml --max-time 1m

The new text is cut once into its first 90% (training) and last 10% (validation), written
to OUT. Then, one after the other, with the preset's settings and --max-time each:
`train --init-from BASE` (fine-tuned) and the same run from fresh weights (from scratch).
All three models (the base unchanged too) are scored by `charrnn eval` on the same
validation text as one stream (--batch-size 1), so the figures compare; characters the
unchanged model's vocabulary lacks are dropped for it (--unknown skip), and the table
says how many.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

EVAL = ["--batch-size", "1", "--seq-len", "256", "--json"]


def charrnn(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"charrnn {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def split(corpus: Path, out: Path) -> tuple[Path, Path]:
    """The first 90% and the last 10% of the text, as two files in `out`."""
    text = corpus.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train, val = out / "train.txt", out / "val.txt"
    train.write_text(text[:cut], encoding="utf-8")
    val.write_text(text[cut:], encoding="utf-8")
    return train, val


def score(checkpoint: Path, val: Path) -> dict:
    """eval's figures for the validation text, and how many characters it dropped."""
    result = charrnn("eval", val, "--checkpoint", checkpoint, "--unknown", "skip", *EVAL)
    figures = json.loads(result.stdout)
    figures["dropped"] = len(val.read_text(encoding="utf-8")) - 1 - figures["chars"]
    return figures


def steps_of(run: Path) -> int:
    return json.loads(charrnn("info", run, "--json").stdout)["training"]["steps"]


def table(rows: list[tuple[str, int, dict]]) -> str:
    lines = ["| model | training steps on the new text | validation loss (nats/char) | bits/char | characters dropped |",
             "|---|---:|---:|---:|---:|"]
    for name, steps, f in rows:
        lines.append(f"| {name} | {steps} | {f['loss']:.4f} | {f['bits_per_char']:.4f} | {f['dropped']} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the trained run (or checkpoint, or exported folder) to start from")
    parser.add_argument("corpus", type=Path, help="the new text, UTF-8")
    parser.add_argument("--config", type=Path, required=True, help="the preset both runs train with")
    parser.add_argument("--max-time", default="1m", help="each run's budget")
    parser.add_argument("--out", type=Path, default=Path("runs/finetune-compare"))
    args = parser.parse_args(argv)
    if args.out.exists():
        sys.exit(f"{args.out} exists: move it away or pick another --out")
    args.out.mkdir(parents=True)
    train, val = split(args.corpus, args.out)
    common = [train, "--val-file", val, "--config", args.config, "--max-time", args.max_time, "--sample-prefix", "",
              "--quiet"]
    charrnn("train", *common, "--init-from", args.base, "--out", args.out / "finetuned")
    charrnn("train", *common, "--out", args.out / "scratch")
    rows = [(f"unchanged ({args.base})", 0, score(args.base, val)),
            (f"fine-tuned for {args.max_time}", steps_of(args.out / "finetuned"), score(args.out / "finetuned", val)),
            (f"from scratch for {args.max_time}", steps_of(args.out / "scratch"), score(args.out / "scratch", val))]
    print(table(rows))


if __name__ == "__main__":
    main()
