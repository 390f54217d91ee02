"""The measurements behind `charrnn train`'s automatic sizing (issue #27, docs/presets.md).

For each corpus and budget, trains the grid's widths (each with the rest of the model
chosen by the sizing rule for that width: `--hidden H` given, the rest left to it),
today's fixed default (every size option given: LSTM 256, one-hot input, lr 5e-3, no
dropout, batch 32 x 64) and the rule's own choice (no size option given), and prints one
JSON line per run and the table of docs/presets.md. A budget without a fixed grid (15
minutes) grids only the two widths beside the rule's choice, after it. Every run is
`--threads 1`, two at a time (--lanes), with one evaluation at the end (--eval-every past
the last step), so the two lanes share the machine alike throughout.

    python scripts/sizing_grid.py --corpora DIR --out runs/sizing        # the whole grid
    python scripts/sizing_grid.py --corpora DIR --make-corpora           # only write the corpora
    python scripts/sizing_grid.py --corpora DIR --budgets 60 --widths 128 256 --only grid
    python scripts/sizing_grid.py --corpora DIR --budgets 900    # rule, fixed, then the rule's neighbours
    python scripts/sizing_grid.py --corpora DIR --results runs/sizing.jsonl --table    # the table

The corpora (written to DIR by --make-corpora, from ../shared/data and this Python's own
standard library): timemachine (179 KB), unicode_sample as bytes (202 KB, --vocab bytes),
tinyshakespeare (1.1 MB) and stdlib (20 MB of the standard library's .py files, in
sorted order, installed packages left out); `--names builtin` adds charrnn's built-in corpus
(the Python language reference) as a check on a text the rule was not fitted on. The validation split is the last 1% of stdlib
(its one character the training text lacks skipped) and 10% of the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from charrnn.training.sizing import WIDTHS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STDLIB_BYTES = 20_000_000
# name: (file in --corpora, extra options)
CORPORA = {
    "timemachine": ("timemachine.txt", []),
    "unicode-bytes": ("unicode_sample.txt", ["--vocab", "bytes"]),
    "tinyshakespeare": ("tinyshakespeare.txt", []),
    "stdlib": ("stdlib.txt", ["--val-fraction", "0.01", "--unknown", "skip"]),
    "builtin": (None, []),  # charrnn's built-in corpus (no file): not in the grid's default --names
}
# the grid's widths per budget; any other budget grids the widths beside the rule's own choice, whose
# run stands for its width (15 minutes: a full grid of wide models would take hours)
DEFAULT_WIDTHS = {60: [128, 192, 256, 384, 512], 300: [192, 256, 384, 512]}
GRID = ["timemachine", "unicode-bytes", "tinyshakespeare", "stdlib"]
RUN = ["--threads", "1", "--eval-every", "1000000000", "--quiet"]
FIXED = ["--hidden", "256", "--layers", "1", "--embedding", "0", "--dropout", "0", "--lr", "5e-3",
         "--batch-size", "32", "--seq-len", "64"]


def make_corpora(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("timemachine.txt", "unicode_sample.txt", "tinyshakespeare.txt"):
        (directory / name).write_bytes((SHARED / name).read_bytes())
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if {"site-packages", "dist-packages"} & set(path.parts):
            continue  # installed packages, not the standard library
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        size += len(text.encode())
        if size >= STDLIB_BYTES:
            break
    data = "".join(parts).encode()[:STDLIB_BYTES].decode(errors="ignore")
    (directory / "stdlib.txt").write_text(data, encoding="utf-8")


def runs(corpora: list[str], budgets: list[int], widths: dict[int, list[int]], only: set[str]):
    for budget in budgets:
        for corpus in corpora:
            if "fixed" in only:
                yield corpus, budget, "fixed", FIXED
            if "rule" in only:
                yield corpus, budget, "rule", []
            if "grid" in only:
                for width in widths[budget]:
                    yield corpus, budget, f"hidden {width}", ["--hidden", str(width)]


def train(directory: Path, out: Path, corpus: str, budget: int, label: str, options: list[str]) -> dict:
    file, extra = CORPORA[corpus]
    run_dir = out / f"{corpus}-{budget}s-{label.replace(' ', '')}"
    command = [sys.executable, "-m", "charrnn", "train", *([str(directory / file)] if file else []), *extra, *RUN, *options,
               "--max-time", f"{budget}s", "--out", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-2000:]}")
    import torch  # (the checkpoint: what the run chose)

    ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    config, progress = ckpt["config"], ckpt["progress"]
    return {"corpus": corpus, "budget": budget, "label": label, "val_loss": progress["last_val_loss"],
            "steps": progress["step"], "elapsed": round(progress["elapsed"], 1),
            "hidden": config["hidden"], "embedding": config["embedding"], "dropout": config["dropout"],
            "lr": config["lr"], "batch_size": config["batch_size"], "seq_len": config["seq_len"],
            "parameters": sum(value.numel() for value in ckpt["model"].values()), "chars_seen": progress["chars_seen"],
            "sizing": ckpt.get("sizing"), "command": " ".join(["charrnn", *command[3:]])}


def table(results: list[dict]) -> str:
    """The sizing table of docs/presets.md: per corpus and budget, each width's loss, the best, the
    fixed default's and the rule's (the latest run of each)."""
    cells: dict = {}
    for result in results:
        cells.setdefault((result["corpus"], result["budget"]), {})[result["label"]] = result
    lines = ["| corpus | budget | grid: width (loss, characters per parameter) | grid's best | fixed default | "
             "rule's choice | rule - best | rule - fixed |", "|---|---:|---|---|---:|---|---:|---:|"]
    for (corpus, budget), runs in sorted(cells.items(), key=lambda item: (item[0][1], list(CORPORA).index(item[0][0]))):
        grid = [r for label, r in runs.items() if label.startswith("hidden")]
        fixed, rule = runs.get("fixed"), runs.get("rule")
        if rule and rule["hidden"] not in {r["hidden"] for r in grid}:
            grid.append(rule)  # the rule's run stands for its width (marked *): the 15-minute column's way
        grid.sort(key=lambda r: r["hidden"])
        best = min(grid, key=lambda r: r["val_loss"]) if grid else None
        cell = ", ".join(f"{r['hidden']}{'*' if r is rule else ''} ({r['val_loss']:.3f}, "
                         f"{r['chars_seen'] / r['parameters']:.3g})" for r in grid)
        loss = lambda r: f"{r['val_loss']:.4f}" if r else "-"  # noqa: E731
        chosen = f"{rule['hidden']}: {loss(rule)}" if rule else "-"
        gap = lambda a, b: f"{a['val_loss'] - b['val_loss']:+.3f}" if a and b else "-"  # noqa: E731
        lines.append(f"| {corpus} | {budget} s | {cell} | {best['hidden'] if best else '-'}: {loss(best)} | "
                     f"{loss(fixed)} | {chosen} | {gap(rule, best)} | {gap(rule, fixed)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, required=True, help="where the corpora are (or go)")
    parser.add_argument("--make-corpora", action="store_true", help="write the corpora and stop")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "sizing")
    parser.add_argument("--names", nargs="+", default=GRID, choices=list(CORPORA))
    parser.add_argument("--budgets", nargs="+", type=int, default=[60, 300])
    parser.add_argument("--widths", nargs="+", type=int, help="the grid's widths for every budget")
    parser.add_argument("--only", nargs="+", default=["grid", "fixed", "rule"], choices=["grid", "fixed", "rule"])
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--results", type=Path, help="append each run's JSON line here")
    parser.add_argument("--table", action="store_true", help="print the table of --results and stop")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]))
        return
    if args.make_corpora:
        make_corpora(args.corpora)
        return
    widths = {budget: args.widths or DEFAULT_WIDTHS.get(budget, []) for budget in args.budgets}
    results = train_all(args, list(runs(args.names, args.budgets, widths, set(args.only))))
    if "grid" in args.only and not args.widths:  # budgets without a fixed grid: the widths beside the rule's choice
        train_all(args, [(r["corpus"], r["budget"], f"hidden {width}", ["--hidden", str(width)]) for r in results
                         if r["label"] == "rule" and r["budget"] not in DEFAULT_WIDTHS for width in beside(r["hidden"])])


def train_all(args, todo: list[tuple]) -> list[dict]:
    results = []
    with ThreadPoolExecutor(args.lanes) as pool:
        for result in pool.map(lambda run: train(args.corpora, args.out, *run), todo):
            line = json.dumps(result)
            print(line, flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(line + "\n")
            results.append(result)
    return results


def beside(width: int) -> list[int]:
    """The widths on either side of `width` among the sizing's WIDTHS."""
    i = WIDTHS.index(width)
    return [WIDTHS[j] for j in (i - 1, i + 1) if 0 <= j < len(WIDTHS)]


if __name__ == "__main__":
    main()
