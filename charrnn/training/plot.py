"""Learning curves: train and validation perplexity against step, read from the
`metrics.jsonl` of one or several run directories and drawn on the same axes.

matplotlib is optional (this project's extra `plot`, or `pip install matplotlib`); it is
imported only when a curve is drawn, with the Agg backend (no display needed), so
training works without it.
"""

from __future__ import annotations

import json
from pathlib import Path

from charrnn.storage.atomic import write_atomically
from charrnn.errors import CharrnnError

MISSING_MATPLOTLIB = "matplotlib is not installed (pip install matplotlib)"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a one-line CharrnnError without it."""
    try:
        import matplotlib
    except ImportError:
        raise CharrnnError(MISSING_MATPLOTLIB) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run: str | Path) -> list[dict]:
    """The evaluation records of a run directory (or of a metrics.jsonl file), in order."""
    run = Path(run)
    path = run if run.is_file() else run / "metrics.jsonl"
    if not run.exists():
        raise CharrnnError(f"run not found: {run}")
    if not path.is_file():
        raise CharrnnError(f"no metrics.jsonl in {run} (is it a run directory?)")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records.append({"step": record["step"], "train_ppl": record["train_ppl"],
                            "val_ppl": record["val_ppl"]})
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CharrnnError(f"{path}, line {number}: not an evaluation record") from None
    return records


def run_name(run: str | Path) -> str:
    """What a run is called in a legend: its directory name (runs/latest resolved)."""
    run = Path(run).resolve()
    return run.parent.name if run.is_file() else run.name


def plot_runs(runs: list[str | Path], out: str | Path) -> Path:
    """Draw train (dashed) and validation (solid) perplexity against step for each run, one
    colour per run, log-scale y, and write the figure to `out` (format from its suffix).
    The file is written atomically, so a reader never sees half an image."""
    curves = []
    for run in runs:
        records = read_metrics(run)
        if not records:
            raise CharrnnError(f"{run} has no evaluations yet")
        curves.append((run_name(run), records))
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import LogFormatter

    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    try:
        one_run = len(curves) == 1
        for i, (name, records) in enumerate(curves):
            steps = [r["step"] for r in records]
            colour = f"C{i % 10}"
            ax.plot(steps, [r["train_ppl"] for r in records], linestyle="--", color="C0" if one_run else colour,
                    label="train ppl" if one_run else None)
            ax.plot(steps, [r["val_ppl"] for r in records], linestyle="-", color="C1" if one_run else colour,
                    marker="." if len(steps) < 30 else None, label="val ppl" if one_run else name)
        ax.set_yscale("log")
        # perplexities as plain numbers (3, 10, 20), not 3x10^0; minor ticks labelled only
        # while the axis spans few enough decades for them to fit
        ax.yaxis.set_major_formatter(LogFormatter())
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.set_xlabel("step")
        ax.set_ylabel("perplexity")
        ax.grid(True, which="both", alpha=0.3)
        if one_run:
            ax.set_title(curves[0][0])
            ax.legend()
        else:
            styles = [Line2D([], [], color="grey", linestyle="-", label="validation"),
                      Line2D([], [], color="grey", linestyle="--", label="train")]
            ax.legend(handles=ax.get_legend_handles_labels()[0] + styles)
        fig.tight_layout()
        out = Path(out)
        try:  # the format from the name's suffix, as savefig would take it from a path
            write_atomically(out, lambda f: fig.savefig(f, format=out.suffix[1:] or None))
        except (OSError, ValueError) as e:
            raise CharrnnError(f"cannot write {out}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        plt.close(fig)
    return out
