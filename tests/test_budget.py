"""--max-time is turned once into a number of steps, so that runs repeat: the plan is
printed and recorded, `--max-steps N` repeats a timed run exactly, `--resume` keeps the
plan, a resumed run with nothing left to train says so instead of printing NaN, the run
stops at the planned step, and the cosine schedule decays over the planned steps."""

from __future__ import annotations

import io
import re
import signal

import pytest
import torch
from rich.console import Console

from charrnn.training.budget import steps_that_fit
from charrnn.checkpoint import load_checkpoint
from charrnn.training.report import TerminalReporter
from charrnn.config import TrainConfig
from charrnn.training.schedule import lr_at
from charrnn.training.train import train
from charrnn.training.report import Reporter

from conftest import TINY, make_text

# the run's sizes, with the start line (not --quiet); cosine follows the step budget and
# dropout draws random numbers: both must repeat
SIZES = [arg for arg in TINY if arg != "--quiet"]
RUN = [*SIZES, "--lr-schedule", "cosine", "--dropout", "0.3", "--eval-every", "50"]


def test_the_steps_that_fit_leave_time_for_every_evaluation():
    # n steps of 0.1 s and an evaluation (1 s) after every 10 and at the end: 45 fit in 10 s
    assert steps_that_fit(10, 0.1, 1.0, 10) == 45
    assert 45 * 0.1 + (45 / 10 + 1) * 1.0 <= 10 < 46 * 0.1 + (46 / 10 + 1) * 1.0
    assert steps_that_fit(0.5, 0.1, 1.0, 10) == 0


def same_weights(a, b) -> bool:
    a, b = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    return all(torch.equal(a[name], b[name]) for name in a)


def test_a_timed_run_prints_its_step_count_and_max_steps_repeats_it_exactly(cli, corpus_file, tmp_path):
    timed = cli("train", corpus_file, *RUN, "--max-time", "2s", "--out", tmp_path / "timed").assert_ok()
    steps = load_checkpoint(tmp_path / "timed" / "last.pt")["progress"]["planned_steps"]
    assert re.search(rf"{steps} steps \(what fits in --max-time 2s: [\d.]+ ms a step and [\d.]+ s an evaluation",
                     timed.stdout), timed.stdout
    assert f"done: {steps} steps" in timed.stdout
    cli("train", corpus_file, *RUN, "--max-steps", steps, "--out", tmp_path / "stepped").assert_ok()
    assert same_weights(tmp_path / "timed", tmp_path / "stepped")


class StopAtFirstReport(Reporter):
    """Ctrl-C at the first progress report (the first evaluation, or after half a second)."""

    def progress(self, info):
        signal.raise_signal(signal.SIGINT)


def test_resume_keeps_the_plan_and_continues_it_exactly(cli, corpus_file, tmp_path):
    config = TrainConfig(corpus=str(corpus_file), hidden=16, batch_size=4, seq_len=16, lr_schedule="cosine",
                         dropout=0.3, eval_every=2, max_time="2s", out=str(tmp_path / "split"))
    stopped = train(config, StopAtFirstReport())
    planned = load_checkpoint(tmp_path / "split" / "last.pt")["progress"]["planned_steps"]
    assert stopped["interrupted"] and stopped["steps"] < planned
    resumed = cli("train", "--resume", tmp_path / "split").assert_ok()
    assert f"{planned} steps (planned for --max-time 2s)" in resumed.stdout  # not measured again
    assert load_checkpoint(tmp_path / "split" / "last.pt")["progress"]["step"] == planned
    cli("train", corpus_file, *RUN, "--eval-every", "2", "--max-steps", planned,
        "--out", tmp_path / "straight").assert_ok()
    assert same_weights(tmp_path / "split", tmp_path / "straight")


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


class Recorder(Reporter):
    def __init__(self):
        self.started, self.records = None, []

    def start(self, info):
        self.started = info

    def evaluation(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory):
    """A run with a 2-second budget and a limit of 1,000 epochs it never reaches:
    (its config, summary, Recorder and planned steps)."""
    where = tmp_path_factory.mktemp("timed")
    (where / "c.txt").write_text(make_text(3000))
    config = TrainConfig(corpus=str(where / "c.txt"), out=str(where / "run"), hidden=16, batch_size=4, seq_len=16,
                         eval_every=10, lr_schedule="cosine", max_time="2s", epochs=1000)
    reporter = Recorder()
    summary = train(config, reporter)
    return config, summary, reporter, load_checkpoint(where / "run" / "last.pt")["progress"]["planned_steps"]


def test_max_time_stops_the_run_at_the_steps_planned_for_it(timed_run):
    config, summary, reporter, planned = timed_run
    assert reporter.started["limited_by"] == "--max-time" and reporter.started["total_steps"] == planned
    assert planned < 1000 * reporter.started["batches_per_epoch"]  # the epochs would go on
    assert summary["steps"] == planned and not summary["interrupted"] and not summary["stopped_early"]


def test_the_cosine_schedule_runs_over_the_time_budgets_planned_steps(timed_run):
    config, summary, reporter, planned = timed_run
    assert reporter.records[-1]["step"] == planned
    for record in reporter.records:  # each record holds the rate of the step that led to it
        step = record["step"] - 1
        assert record["lr"] == lr_at(config, step / planned, step)
    rates = [record["lr"] for record in reporter.records]
    assert rates == sorted(rates, reverse=True) and rates[-1] < config.lr
