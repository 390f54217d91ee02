"""The training loop, read top to bottom: set up (or resume) a run; then step, report,
evaluate and checkpoint until a limit, a stop request or --patience ends it; then a last
evaluation and the summary.

    train()              the loop
    set_up()             the run: data, directory, model, optimizer, steps (charrnn.training.run)
    train_one_step()     a batch: learning rate, forward and backward, optimizer step
    report_progress()    the training loss and speed, every half second or so
    evaluate_and_save()  validation loss, metrics.jsonl, best.pt and last.pt
    finish()             the last evaluation, or last.pt when a signal stopped the run

The step itself is charrnn.training.train_step's, the learning rate and the step limits
charrnn.training.schedule's, the run directory charrnn.training.run_dir's, the --max-time plan and its
revisions charrnn.training.budget's (follow_plan, before every step, charrnn.training.run's), and the
checkpoint format charrnn.storage.checkpoint's.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from charrnn.kernels import cpu_matmul
from charrnn.training import budget, streams
from charrnn.storage.checkpoint import save_checkpoint
from charrnn.config import TrainConfig
from charrnn.training.distributed import agree_to_stop, all_reduce, gather_rows, rank, world_size
from charrnn.errors import CharrnnError
from charrnn.model import detach_state, map_state
from charrnn.training.report import Reporter
from charrnn.training.run import Resumed, Run, follow_plan, set_up
from charrnn.training.schedule import after_evaluation, lr_at, plan_progress
from charrnn.training.train_step import cuda_precision

# Training stops as diverged when the mean training loss since the last evaluation is this many
# times the untrained model's: ln(vocabulary size), or the first step's loss if a custom
# init starts higher. Healthy training never climbs that far above where it started.
DIVERGENCE_FACTOR = 3.0


def train(config: TrainConfig, reporter: Reporter | None = None, resume: str | Path | Resumed | None = None,
          replay: str | Path | Resumed | None = None, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Train a model as `config` says; returns a summary dict (run directory, steps, losses,
    `interrupted` when Ctrl-C or SIGTERM stopped it, `stopped_early` when --patience did).

    With `resume` (a run directory or a checkpoint file), continue that run exactly where
    it stopped: weights, optimizer, step, position in the data, hidden state and random
    number generator; `config` is then that run's settings with any changes to how long
    it trains (its model and data settings must be the run's own). With `replay` (a run
    directory), train a new run that follows that run's recorded plan (charrnn.training.budget):
    with its settings, it repeats that run exactly. `clock` times the run and its
    --max-time plan (tests give a simulated one).

    In a torch.distributed process group (charrnn.training.distributed), every process trains on
    its own `batch_size` rows of a global batch of batch_size x world_size, and only rank
    0 reports and writes files."""
    reporter = (reporter or Reporter()) if rank() == 0 else Reporter()
    run = set_up(config, reporter, resume, replay, clock)
    tally = Tally(loss_sum=torch.zeros((), device=run.device), window_start=clock())
    stopped_early = False
    with StopRequest() as stop, cuda_precision(run.device, config.tf32):
        while True:
            # all processes leave the loop at the same step (nothing to agree on alone)
            run.progress.elapsed, stopped_by = agree_to_stop(clock() - run.started, stop.requested)
            if not stopped_by:
                follow_plan(run, run.progress.elapsed)
            if stopped_by or run.progress.step >= run.total_steps:
                break
            lr = train_one_step(run, tally)
            at_eval = run.progress.step % config.eval_every == 0
            report_progress(run, tally, lr, at_eval)
            if at_eval:
                tally.last_record = timed_evaluation(run, tally)
                tally.loss_sum.zero_()
                tally.loss_steps = 0
                if config.patience and run.progress.evals_since_best >= config.patience:
                    stopped_early = True
                    break
        finish(run, tally, stopped_by)
    run.progress.elapsed = clock() - run.started  # the last evaluation counts
    summary = summary_of(run, tally, stopped_by, stopped_early)
    reporter.finish(summary)
    return summary


@dataclass
class Tally:
    """What the loop counts between reports: the training loss since the last evaluation
    (summed on the device: no host sync per step) and the characters since the last
    progress report (chars/s over the last half second or so)."""

    loss_sum: torch.Tensor
    window_start: float  # the run's clock at the last progress report
    loss_steps: int = 0
    window_chars: int = 0
    train_loss: float = math.nan  # the mean at the last report
    chars_per_s: float = 0.0
    loss_limit: float = math.inf  # DIVERGENCE_FACTOR times the untrained model's loss, set at the first step
    last_record: dict | None = None  # the last evaluation's


# ---------------------------------------------------------------- step, report, evaluate


def train_one_step(run: Run, tally: Tally) -> float:
    """One batch: the learning rate of this step, forward and backward (TrainStep), the
    optimizer's step; the progress and the tallies move on. Returns the learning rate."""
    progress, batches = run.progress, run.batches
    lr = lr_at(run.config, plan_progress(progress.step, run.total_steps, progress.anchor), progress.step,
               progress.lr_scale)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    X, Y = batches.batch(progress.epoch, progress.index)  # slices of the text, on the device
    batch_chars = Y.numel()
    if not batches.carries_state or progress.index == 0:
        run.carried = None
    # the mean over the global batch: the processes' gradients are averaged, so each
    # divides its sum by its fair share (a short last batch of windows can leave some
    # processes fewer rows, or none)
    loss, run.carried = run.train_step(X[run.rows], Y[run.rows], run.carried, divisor=batch_chars / world_size())
    if tally.loss_limit == math.inf:
        tally.loss_limit = DIVERGENCE_FACTOR * max(math.log(len(run.corpus.vocab)), loss.item())
    run.optimizer.step()
    if run.train_step.note:
        run.reporter.note(run.train_step.note)
        run.train_step.note = None

    tally.loss_sum += loss
    tally.loss_steps += 1
    tally.window_chars += batch_chars
    progress.step += 1
    progress.chars_seen += batch_chars
    progress.index += 1
    if progress.index == batches.batches_per_epoch:
        progress.epoch, progress.index = progress.epoch + 1, 0
    return lr


def report_progress(run: Run, tally: Tally, lr: float, at_eval: bool) -> None:
    """At an evaluation, or half a second after the last report: the mean training loss
    since the last evaluation (stopping a diverged run) and the speed."""
    now = run.clock()
    if not (at_eval or now - tally.window_start > 0.5):
        return
    tally.train_loss = tally.loss_sum.item() / tally.loss_steps
    tally.chars_per_s = tally.window_chars / max(now - tally.window_start, 1e-9)
    check_train_loss(run, tally)
    run.progress.elapsed = now - run.started
    run.reporter.progress({"step": run.progress.step, "total_steps": run.total_steps, "loss": tally.train_loss,
                           "lr": lr, "chars_per_s": tally.chars_per_s, "elapsed": run.progress.elapsed,
                           "max_time": math.inf, "epoch": run.progress.epoch})  # steps, not the clock
    tally.window_chars, tally.window_start = 0, now


def timed_evaluation(run: Run, tally: Tally) -> dict:
    """evaluate_and_save, its seconds told to the --max-time plan."""
    started = run.clock()
    record = evaluate_and_save(run, tally.train_loss, tally.chars_per_s)
    if run.progress.speed:
        budget.evaluated(run.progress.speed, run.clock() - started)
    return record


def evaluate_and_save(run: Run, train_loss: float, chars_per_s: float) -> dict:
    """The validation loss, its record in metrics.jsonl, best.pt when it is a new best, and
    last.pt. Each process evaluates its share of the global batch's streams; all get the
    same sums, so all agree on the best checkpoint."""
    progress = run.progress
    loss_sum, count = run.validation_sums()
    loss_sum, count, train_loss = all_reduce([loss_sum, count, train_loss / world_size()])
    val_loss = loss_sum / count
    if not math.isfinite(val_loss):
        raise diverged(run, f"the validation loss became {val_loss}")
    progress.last_val_loss = val_loss
    record = {"step": progress.step, "epoch": progress.epoch, "elapsed": progress.elapsed,
              "chars_seen": progress.chars_seen, "train_loss": train_loss,
              "train_ppl": math.exp(min(train_loss, 50)), "val_loss": val_loss,
              "val_ppl": math.exp(min(val_loss, 50)), "lr": run.optimizer.param_groups[0]["lr"],
              "chars_per_s": chars_per_s, "best": val_loss < progress.best_val_loss}
    after_evaluation(run.config, progress, val_loss)
    if record["best"]:
        save(run, "best.pt")
    save(run, "last.pt")
    if rank() == 0:
        with open(run.directory / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    run.reporter.evaluation(record)
    return record


def save(run: Run, name: str) -> None:
    """The run as it stands, as a checkpoint (charrnn.storage.checkpoint lists its sections). Every
    process calls it, for the carried state of all streams and every process's random
    generators; rank 0 writes."""
    # Never replace a good checkpoint with a broken model.
    if not all(bool(torch.isfinite(p).all()) for p in run.params):
        raise diverged(run, "the weights became NaN or infinite")
    # windows start from a zero state: nothing is carried
    carried = map_state(gather_rows, detach_state(run.carried)) if run.batches.carries_state else None
    rng = streams.gather(run.device)
    if rank() != 0:
        return
    save_checkpoint({
        "model_config": asdict(run.model_config), "vocab": run.corpus.vocab.to_dict(),
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "config": asdict(run.config),
        "progress": asdict(run.progress), "gemm": cpu_matmul.gemm_choices(), "corpus": run.corpus.source, "rng": rng,
        "state": carried,
        "evaluation": run.eval_layout,  # for `charrnn eval` to compute the validation loss the same way
        "sizing": run.sizing,
    }, run.directory / name)


def check_train_loss(run: Run, tally: Tally) -> None:
    if not math.isfinite(tally.train_loss):
        raise diverged(run, f"the training loss became {tally.train_loss}")
    if tally.train_loss > tally.loss_limit:
        raise diverged(run, f"the training loss reached {tally.train_loss:.4g}, over {DIVERGENCE_FACTOR:g}x "
                            f"the untrained model's {tally.loss_limit / DIVERGENCE_FACTOR:.4g}")


def diverged(run: Run, what: str) -> CharrnnError:
    kept = (f"the last good checkpoint is kept in {run.directory}" if (run.directory / "last.pt").exists()
            else "no checkpoint was saved")
    return CharrnnError(f"training diverged at step {run.progress.step}: {what}; {kept} "
                        f"(lower --lr, now {run.config.lr:g}, or --clip, now {run.config.clip:g})")


# ---------------------------------------------------------------- finish


def finish(run: Run, tally: Tally, stopped_by: str | None) -> None:
    """The mean training loss of the steps since the last evaluation; then last.pt to
    resume from when a signal stopped the run, or else a last evaluation (unless the last
    step had one: then last.pt again if the plan changed after it)."""
    if tally.loss_steps:
        tally.train_loss = all_reduce([tally.loss_sum.item() / tally.loss_steps])[0] / world_size()
        check_train_loss(run, tally)
    if stopped_by:
        run.progress.elapsed = run.clock() - run.started
        save(run, "last.pt")
    elif tally.last_record is None or tally.last_record["step"] != run.progress.step:
        tally.last_record = evaluate_and_save(run, tally.train_loss, tally.chars_per_s)
    elif run.progress.totals[-1][0] == run.progress.step:
        # the revision that ended the run came after this step's evaluation saved last.pt:
        # --replay follows the totals last.pt records, so it must record this one too
        save(run, "last.pt")


def summary_of(run: Run, tally: Tally, stopped_by: str | None, stopped_early: bool) -> dict:
    progress = run.progress
    last_val = tally.last_record["val_loss"] if tally.last_record else math.nan
    return {"run": str(run.directory), "steps": progress.step, "elapsed": progress.elapsed,
            "chars_seen": progress.chars_seen, "train_loss": tally.train_loss,
            "val_loss": last_val, "val_ppl": math.exp(min(last_val, 50)),
            "best_val_loss": progress.best_val_loss, "best_val_ppl": math.exp(min(progress.best_val_loss, 50)),
            "chars_per_s": progress.chars_seen / max(progress.elapsed, 1e-9),
            "interrupted": stopped_by, "stopped_early": stopped_early}


class StopRequest:
    """Ctrl-C or SIGTERM during training asks the loop to stop after the current step and
    save; a second Ctrl-C abandons at once (saves are atomic, so no file is corrupted)."""

    def __init__(self):
        self.requested = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
