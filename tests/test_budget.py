"""--max-time plans the steps that fit and revises the plan as the run goes: tested on a
simulated machine that slows down and speeds up (no timed test), where the run ends on
its budget, the cosine bends without jumps, a resumed run revises exactly as the run
would have, and `--replay` repeats it bit for bit; then on the real clock through the CLI
(the start line, --replay, resume, budgets added with +N / +D, a spent budget)."""

from __future__ import annotations

import io
import re
import signal

import pytest
import torch
from rich.console import Console

from charrnn.training import budget
from charrnn.training.budget import Speed, steps_that_fit
from charrnn.storage.checkpoint import load_checkpoint
from charrnn.config import TrainConfig
from charrnn.training.report import TerminalReporter
from charrnn.training.run import Run
from charrnn.training.progress import Progress
from charrnn.training.schedule import change_total, plan_progress
from charrnn.training.train import train
from charrnn.training.report import Reporter
from charrnn.training.train_step import TrainStep

from conftest import TINY, make_text

# the run's sizes, with the start line (not --quiet); cosine follows the plan and dropout
# draws random numbers: both must repeat
SIZES = [arg for arg in TINY if arg != "--quiet"]
RUN = [*SIZES, "--lr-schedule", "cosine", "--dropout", "0.3", "--eval-every", "50"]


# ---------------------------------------------------------------- the plan, on paper


def test_the_steps_that_fit_leave_time_for_every_evaluation():
    # steps of 0.1 s, an evaluation (1 s) after every 10 and at the end: 50 steps and 5
    # evaluations fill 10 s (the one at step 50 is the last); 51 would need a sixth
    assert steps_that_fit(10, 0.1, 1.0, 10) == 50
    # from step 5: 45 steps reach step 50 with 5 evaluations; 46 need a final one
    assert steps_that_fit(10, 0.1, 1.0, 10, step=5) == 45
    assert steps_that_fit(0.5, 0.1, 1.0, 10) == 0
    assert budget.evaluation_count(5, 45, 10) == 5 and budget.evaluation_count(5, 46, 10) == 6


def test_a_change_of_the_total_bends_the_progress_without_a_jump():
    progress = Progress()
    change_total(progress, 0, 100)
    assert [plan_progress(s, 100, progress.anchor) for s in (0, 50)] == [0.0, 0.5]  # step / total
    change_total(progress, 40, 140)  # slower: the rest of the way over 100 steps
    assert progress.anchor == [40, 0.4] and plan_progress(40, 140, progress.anchor) == 0.4
    assert plan_progress(90, 140, progress.anchor) == pytest.approx(0.7)
    change_total(progress, 40, 120)  # a second change at the same step replaces the first
    assert progress.totals == [[0, 100], [40, 120]] and progress.anchor == [40, 0.4]
    change_total(progress, 60, 120)  # no change, no record
    assert progress.totals == [[0, 100], [40, 120]]
    assert plan_progress(120, 120, progress.anchor) == 1.0


class Machine:
    """A simulated machine: a training step and an evaluation take `step` and `evaluation`
    seconds, times `slowdown(t)`, t the seconds since the run began."""

    def __init__(self, step=0.1, evaluation=0.3, slowdown=lambda t: 1.0, now=0.0):
        self.step, self.evaluation, self.slowdown, self.now = step, evaluation, slowdown, now

    def clock(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds * self.slowdown(self.now)


def busy_from_a_third(t: float, budget_seconds: float = 40.0) -> float:
    """Twice as slow from a third of the budget, then 1.5 times as fast as at first from two thirds."""
    return 1.0 if t < budget_seconds / 3 else 2.0 if t < 2 * budget_seconds / 3 else 2 / 3


def simulate(machine: Machine, seconds: float, eval_every: int, revising: bool) -> tuple[float, list[float], Progress]:
    """The loop of charrnn.training.train with the plan's calls, on `machine`: the seconds the run
    took, the cosine's progress at each step, and the run's Progress."""
    measured = machine.step * machine.slowdown(0.0)  # the trial steps
    machine.spend(8 * machine.step + machine.evaluation)
    progress = Progress(planned_for=seconds)
    progress.speed = Speed(measured, machine.evaluation, since=machine.now, since_step=0, eval_step_seconds=measured)
    change_total(progress, 0, steps_that_fit(seconds - machine.now, measured, machine.evaluation, eval_every))
    seen = []
    while True:
        if revising and budget.revision_due(progress.speed, progress.step, machine.now, seconds, eval_every):
            change_total(progress, progress.step,
                         budget.revise(progress.speed, progress.step, machine.now, seconds, eval_every))
        if progress.step >= progress.totals[-1][1]:
            break
        seen.append(plan_progress(progress.step, progress.totals[-1][1], progress.anchor))
        machine.spend(machine.step)
        progress.step += 1
        if progress.step % eval_every == 0:
            started = machine.now
            machine.spend(machine.evaluation)
            budget.evaluated(progress.speed, machine.now - started)
    if progress.step % eval_every:
        machine.spend(machine.evaluation)  # the last evaluation
    return machine.now, seen, progress


@pytest.mark.parametrize("slowdown", [lambda t: 1.0, busy_from_a_third, lambda t: 0.5 if t > 20 else 1.0],
                         ids=["steady", "slower-then-faster", "faster"])
def test_a_revised_plan_ends_on_its_budget_when_the_machine_changes_speed(slowdown):
    took, seen, progress = simulate(Machine(slowdown=slowdown), 40.0, eval_every=50, revising=True)
    assert took == pytest.approx(40.0, rel=0.01)
    assert seen == sorted(seen) and seen[0] == 0.0 and seen[-1] > 0.99  # the cosine runs to its end
    steps = len(seen)
    assert max(b - a for a, b in zip(seen, seen[1:])) < 3 / steps  # bends, never jumps


def test_the_plan_made_once_misses_the_budget_the_revised_one_keeps():
    def slower(t: float) -> float:
        return 1.0 if t < 40 / 3 else 2.0

    assert simulate(Machine(slowdown=slower), 40.0, eval_every=50, revising=False)[0] > 40.0 * 1.5
    assert simulate(Machine(slowdown=slower), 40.0, eval_every=50, revising=True)[0] == pytest.approx(40.0, rel=0.01)


def test_the_last_evaluation_is_expected_as_much_slower_as_the_steps_have_become():
    # long evaluations (3 s, every 100 steps of 0.1 s); the machine halves its speed after
    # the last evaluation before the end: the final one then takes 6 s, not the 3 s measured
    machine = Machine(step=0.1, evaluation=3.0, slowdown=lambda t: 1.0 if t < 28 else 2.0)
    assert simulate(machine, 40.0, eval_every=100, revising=True)[0] == pytest.approx(40.0, rel=0.01)


# ---------------------------------------------------------------- the plan, in train()


@pytest.fixture
def machine(monkeypatch):
    """A simulated machine whose clock train() reads: steps and evaluations advance it."""
    simulated = Machine(slowdown=lambda t: busy_from_a_third(t, 20.0))
    step, validation_sums = TrainStep.__call__, Run.validation_sums

    def timed_step(self, *args, **kwargs):
        simulated.spend(simulated.step)
        return step(self, *args, **kwargs)

    def timed_evaluation(self):
        simulated.spend(simulated.evaluation)
        return validation_sums(self)

    monkeypatch.setattr(TrainStep, "__call__", timed_step)
    monkeypatch.setattr(Run, "validation_sums", timed_evaluation)
    return simulated


class StopAtReport(Reporter):
    """Ctrl-C at the `n`th progress report."""

    def __init__(self, n: int):
        self.n = n

    def progress(self, info):
        self.n -= 1
        if self.n == 0:
            signal.raise_signal(signal.SIGINT)


def simulated_config(tmp_path, out: str) -> TrainConfig:
    if not (tmp_path / "c.txt").exists():
        (tmp_path / "c.txt").write_text(make_text(3000))
    return TrainConfig(corpus=str(tmp_path / "c.txt"), out=str(tmp_path / out), hidden=16, batch_size=4, seq_len=16,
                       eval_every=20, lr_schedule="cosine", dropout=0.3, max_time="20s")


def same_weights(a, b) -> bool:
    a, b = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    return all(torch.equal(a[name], b[name]) for name in a)


def test_a_timed_run_on_a_changing_machine_ends_on_its_budget_and_replays_exactly(tmp_path, machine):
    summary = train(simulated_config(tmp_path, "timed"), Reporter(), clock=machine.clock)
    assert summary["elapsed"] == pytest.approx(20.0, rel=0.03)
    progress = load_checkpoint(tmp_path / "timed" / "last.pt")["progress"]
    assert len(progress["totals"]) > 2 and progress["totals"][-1][1] == summary["steps"] == progress["step"]
    machine.slowdown = lambda t: 5.0  # a replay follows the recorded plan, not the clock
    replayed = train(simulated_config(tmp_path, "replay"), Reporter(), replay=tmp_path / "timed",
                     clock=machine.clock)
    assert replayed["steps"] == summary["steps"] and same_weights(tmp_path / "timed", tmp_path / "replay")
    assert load_checkpoint(tmp_path / "replay" / "last.pt")["progress"]["totals"] == progress["totals"]


def test_a_revision_that_ends_the_run_right_after_an_evaluation_is_saved_and_replayed(tmp_path, machine):
    # the evaluation at step 20 (it starts near 3.1 s) takes 15 s of the 20: the revision
    # after it finds no room for another step, after that evaluation wrote last.pt
    machine.slowdown = lambda t: 50.0 if 3.05 < t < 3.2 else 1.0
    summary = train(simulated_config(tmp_path, "timed"), Reporter(), clock=machine.clock)
    progress = load_checkpoint(tmp_path / "timed" / "last.pt")["progress"]
    assert summary["steps"] == progress["step"] == 20 and progress["totals"][-1] == [20, 20]
    replayed = train(simulated_config(tmp_path, "replay"), Reporter(), replay=tmp_path / "timed",
                     clock=machine.clock)
    assert replayed["steps"] == 20 and same_weights(tmp_path / "timed", tmp_path / "replay")


def test_a_resumed_timed_run_revises_exactly_as_the_run_that_never_stopped(tmp_path, machine):
    straight = train(simulated_config(tmp_path, "straight"), Reporter(), clock=machine.clock)
    machine.now = 0.0
    stopped = train(simulated_config(tmp_path, "split"), StopAtReport(15), clock=machine.clock)
    assert stopped["interrupted"] and 0 < stopped["steps"] < straight["steps"]
    saved = load_checkpoint(tmp_path / "split" / "last.pt")["progress"]
    machine.now = saved["elapsed"]  # the clock goes on from the run's own time
    resumed = train(simulated_config(tmp_path, "split"), Reporter(), resume=tmp_path / "split", clock=machine.clock)
    assert resumed["steps"] == straight["steps"] and same_weights(tmp_path / "split", tmp_path / "straight")
    totals = [load_checkpoint(tmp_path / run / "last.pt")["progress"]["totals"] for run in ("split", "straight")]
    assert totals[0] == totals[1] and len(totals[0]) > 2


# ---------------------------------------------------------------- on the real clock, through the CLI


def test_a_timed_run_prints_its_plan_and_replay_repeats_it_exactly(cli, corpus_file, tmp_path):
    timed = cli("train", corpus_file, *RUN, "--max-time", "2s", "--out", tmp_path / "timed").assert_ok()
    progress = load_checkpoint(tmp_path / "timed" / "last.pt")["progress"]
    first, steps = progress["totals"][0][1], progress["step"]
    assert re.search(rf"{first} steps \(what fits in --max-time 2s: [\d.]+ ms a step and [\d.]+ s an evaluation, "
                     r"measured; revised as it goes\)", timed.stdout), timed.stdout
    assert f"done: {steps} steps" in timed.stdout and progress["totals"][-1][1] == steps
    replay = cli("train", "--replay", tmp_path / "timed", "--out", tmp_path / "replay").assert_ok()
    assert f"{first} steps (the plan it replays)" in replay.stdout
    assert same_weights(tmp_path / "timed", tmp_path / "replay")
    cli("train", "--replay", tmp_path / "timed", "--lr", "0.1").assert_one_line_error("--lr cannot change")


def test_resume_continues_the_plan_and_replay_repeats_the_whole_run(cli, corpus_file, tmp_path):
    config = TrainConfig(corpus=str(corpus_file), hidden=16, batch_size=4, seq_len=16, lr_schedule="cosine",
                         dropout=0.3, eval_every=2, max_time="2s", out=str(tmp_path / "split"))
    stopped = train(config, StopAtReport(1))
    planned = load_checkpoint(tmp_path / "split" / "last.pt")["progress"]["totals"][-1][1]
    assert stopped["interrupted"] and stopped["steps"] < planned
    resumed = cli("train", "--resume", tmp_path / "split").assert_ok()
    assert "(planned for --max-time 2s; revised as it goes)" in resumed.stdout  # not measured again
    cli("train", "--replay", tmp_path / "split", "--out", tmp_path / "replay").assert_ok()
    assert same_weights(tmp_path / "split", tmp_path / "replay")


def test_plus_adds_to_a_resumed_runs_budget(cli, corpus_file, tmp_path):
    cli("train", corpus_file, *SIZES, "--max-steps", "4", "--out", tmp_path / "run").assert_ok()
    more = cli("train", "--resume", tmp_path / "run", "--max-steps", "+3").assert_ok()
    assert "7 steps (+3 on the run's 4)" in more.stdout
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["step"] == 7
    whole = cli("train", "--resume", tmp_path / "run", "--max-steps", "9").assert_ok()
    assert "9 steps (+2 on the run's 7)" in whole.stdout
    elapsed = load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["elapsed"]
    cli("train", "--resume", tmp_path / "run", "--max-steps", "0", "--max-time", "+1s").assert_ok()
    config = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert config["max_time"] == f"{elapsed + 1:g}s"  # the run's time so far, and a second more
    cli("train", corpus_file, *TINY, "--max-steps", "+3").assert_one_line_error("adds to a resumed run's steps")
    cli("train", corpus_file, *TINY, "--max-time", "+1m").assert_one_line_error("adds to a resumed run's budget")


@pytest.mark.parametrize("limit, option", [(["--max-steps", "4"], "--max-steps"),
                                           (["--max-time", "1s"], "--max-time")])
def test_a_spent_budget_says_there_is_nothing_left_and_how_to_give_more(cli, corpus_file, tmp_path, limit, option):
    cli("train", corpus_file, *TINY, *limit, "--out", tmp_path / "run").assert_ok()
    error = cli("train", "--resume", tmp_path / "run").assert_one_line_error("nothing left to train", option)
    assert f"resume with a larger {option}" in error and "nan" not in error


def test_the_start_line_names_the_limit_that_binds():
    console = Console(file=io.StringIO(), width=400)
    info = {"run": "r", "device": "cpu", "parameters": 1, "vocab_size": 2, "train_chars": 9, "val_chars": 1,
            "total_steps": 40, "max_time": 90.0, "time_plan": None, "limited_by": "--max-steps", "step": 0,
            "best_val_loss": float("inf"), "batches_per_epoch": 1,
            "config": {"layers": 1, "cell": "gru", "hidden": 8, "lr": 0.1, "max_time": "90s"}}
    TerminalReporter(console).start(info)
    assert "40 steps on cpu" in console.file.getvalue()  # --max-steps, not the time budget, decides
    resumed = {**info, "limited_by": "--max-time", "max_time": 150.0, "had": {"steps": 30, "seconds": 90.0},
               "time_plan": budget.Plan(40, 0.05, 0.5, 1.0), "config": {**info["config"], "max_time": "150s"}}
    TerminalReporter(console).start(resumed)  # resumed with --max-time 150s or +1m
    assert ("40 steps (what fits in --max-time 150s (1m more than the run had): 50 ms a step and 0.5 s an "
            "evaluation, measured; revised as it goes)") in console.file.getvalue()
