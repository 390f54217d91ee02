"""How training looks in a terminal: a rich live progress bar on a terminal, plain
one-line records elsewhere (CI logs, pipes), and one scannable line per evaluation."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from charrnn.corpus.vocab import escape_chars


def eval_line(r: dict, total_steps: int | None) -> str:
    of = f"/{total_steps}" if total_steps else ""
    best = " *" if r["best"] else ""
    return (f"| step {r['step']:>6}{of} | {r['elapsed']:7.1f}s | train loss {r['train_loss']:6.3f} "
            f"| val loss {r['val_loss']:6.3f} | val ppl {r['val_ppl']:8.3f}{best} "
            f"| {r['chars_per_s']:9,.0f} chars/s | lr {r['lr']:.2e} |")


def finish_line(s: dict, patience: int = 0) -> str:
    """The final summary; its first word says how training ended (done, stopped early, or
    stopped by a signal), so a log's last line answers "did it finish?"."""
    if s["interrupted"]:
        how = f"stopped by {s['interrupted']}"
    elif s["stopped_early"]:
        how = f"stopped early (no new best validation loss in {patience} evaluations)"
    else:
        how = "done"
    if math.isnan(s["val_loss"]):
        quality = "no evaluation yet"
    else:
        quality = f"validation perplexity {s['val_ppl']:.3f} (best {s['best_val_ppl']:.3f})"
    return (f"{how}: {s['steps']} steps in {s['elapsed']:.1f}s ({s['chars_per_s']:,.0f} chars/s); "
            f"{quality}; checkpoints in {s['run']}")


class Reporter:
    """What train() tells the outside world; the CLI draws it, the library stays quiet."""

    def start(self, info: dict) -> None: ...

    def note(self, text: str) -> None:
        """Something the user should know that is not an error (a byte-order mark removed)."""

    def progress(self, info: dict) -> None: ...

    def evaluation(self, record: dict) -> None: ...

    def finish(self, summary: dict) -> None: ...


def budget_text(info: dict) -> str:
    """The start line's budget: the steps, what limits them, and on a resumed run whose
    budget changed, what it adds to the run's."""
    c, plan, limit, had = info["config"], info.get("time_plan"), info.get("limited_by"), info.get("had") or {}
    text = f"{info['total_steps']} steps"
    more = ""
    if limit == "--max-time" and had.get("seconds") and had["seconds"] != info["max_time"]:
        more = f" ({format_seconds(info['max_time'] - had['seconds'])} more than the run had)"
    elif limit == "--max-steps" and had.get("steps") and had["steps"] != info["total_steps"]:
        more = f" ({info['total_steps'] - had['steps']:+d} on the run's {had['steps']})"
    if limit == "--max-time" and plan:
        return text + (f" (what fits in --max-time {c['max_time']}{more}: {plan.step_seconds * 1000:.3g} ms a step "
                       f"and {plan.eval_seconds:.2g} s an evaluation, measured; revised as it goes)")
    if limit == "--max-time":
        return text + f" (planned for --max-time {c['max_time']}; revised as it goes)"
    if limit == "the plan it replays":
        return text + " (the plan it replays)"
    return text + more


def format_seconds(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    return sign + (f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s")


class TerminalReporter(Reporter):
    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(soft_wrap=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.progress_bar = None
        self.total_steps = None

    def start(self, info):
        self.total_steps = info["total_steps"]
        self.patience = info["config"].get("patience", 0)
        if self.quiet:
            return
        c = info["config"]
        model = (f"{c['layers']}-layer {c['cell'].upper()} ({c['hidden']} hidden, {info['parameters']:,} parameters) "
                 f"on {info['train_chars']:,} characters (vocabulary {info['vocab_size']}; "
                 f"{info['val_chars']:,} for validation)")
        if info.get("resumed_from"):  # named as the user gave it, which a fresh run's start line does too
            line = f"resuming {info['resumed_from']} at step {info['step']} of {budget_text(info)}: a {model}, on {info['device']}"
        else:
            line = f"training a {model}, {budget_text(info)} on {info['device']}; run: {info['run']}"
        self.console.print(line, highlight=False, markup=False)
        if info.get("sizing"):
            self.console.print(info["sizing"], highlight=False, markup=False)
        if info.get("init_from"):
            added = info["init_from"]["added"]
            shown = f": {escape_chars(added[:20])}{', ...' if len(added) > 20 else ''}" if added else ""
            self.console.print(f"starting from {info['init_from']['from']}; {len(added)} character(s) added to its "
                               f"vocabulary{shown}", highlight=False, markup=False)
        if self.live:
            resumed_best = info["best_val_loss"]  # a resumed run already has a best
            best = f"{math.exp(min(resumed_best, 50)):.2f}" if math.isfinite(resumed_best) else "-"
            self.progress_bar = Progress(
                TextColumn("[bold]step {task.fields[step]}"),
                BarColumn(bar_width=24), TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("loss {task.fields[loss]:.3f} | val ppl {task.fields[val_ppl]} "
                           "(best {task.fields[best_ppl]}) | lr {task.fields[lr]:.2e} | "
                           "{task.fields[cps]:,.0f} chars/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self.progress_bar.start()
            self.task = self.progress_bar.add_task("train", total=100, step="0", loss=math.nan, cps=0,
                                                   lr=c["lr"], val_ppl="-", best_ppl=best)

    def note(self, text):
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def progress(self, p):
        self.total_steps = p["total_steps"]  # the --max-time plan's revisions move it
        if self.progress_bar:
            fraction = max(p["step"] / p["total_steps"] if p["total_steps"] else 0,
                           p["elapsed"] / p["max_time"])
            of = f"/{p['total_steps']}" if p["total_steps"] else ""
            self.progress_bar.update(self.task, completed=100 * fraction, step=f"{p['step']}{of}",
                                     loss=p["loss"], cps=p["chars_per_s"], lr=p["lr"])

    def evaluation(self, r):
        if self.progress_bar:
            shown = {"val_ppl": f"{r['val_ppl']:.2f}"}
            if r["best"]:
                shown["best_ppl"] = shown["val_ppl"]
            self.progress_bar.update(self.task, **shown)
        if not self.quiet:
            self.console.print(eval_line(r, self.total_steps), highlight=False, markup=False)

    def finish(self, s):
        if self.progress_bar:
            self.progress_bar.stop()
        self.console.print(finish_line(s, self.patience), highlight=False, markup=False)
