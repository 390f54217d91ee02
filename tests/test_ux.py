"""The training and sampling experience: live display and plain records, learning-rate
schedules and early stopping, learning curves, generation options, the interactive
prompt, `charrnn info` and `eval --show`.

Everything here is tiny (hidden 8-16, a corpus of a few thousand characters, a handful of
steps) and single-threaded, so the whole file runs in seconds on a shared machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import signal
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from charrnn.cli.main import app
from charrnn.config import TrainConfig
from charrnn.training.train import train
from charrnn.training.report import Reporter

torch.set_num_threads(1)

WORDS = "the time traveller said <it> & so, we went on; quick brown fox\n".split(" ")
TINY = ["--hidden", "16", "--batch-size", "4", "--seq-len", "16"]


def invoke(*args, **kwargs):
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="charrnn", **kwargs)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 3,000 characters with newlines, '<', '&' and quotes-free punctuation."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(500)))
    return path


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory) -> Path:
    """A trained tiny run directory (through the CLI, so it has curve.png too)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = invoke("train", corpus, *TINY, "--max-steps", 30, "--eval-every", 10, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# ---------------------------------------------------------------- help


def test_help_shows_the_defaults_written_in_help_texts():
    result = invoke("train", "--help", env={"COLUMNS": "200"})
    assert f"[default: {TrainConfig().lr}]" in result.output  # rich markup used to swallow these
    assert "runs/YYYYmmdd-HHMMSS" in result.output


def test_every_training_setting_is_an_option_whose_default_is_the_configs():
    from dataclasses import fields

    from typer.main import get_command

    from charrnn.cli.main import app

    train_command = get_command(app).commands["train"]
    options = {param.name: param for param in train_command.params}
    defaults = TrainConfig()
    for field in fields(TrainConfig):
        if field.name == "auto_size":  # not an option: the command line sets it from the options given
            continue
        assert field.name in options, f"--{field.name.replace('_', '-')} is missing"
        default = options[field.name].default
        expected = getattr(defaults, field.name)
        assert (str(default) if field.name in ("corpus", "val_file") and default else default) == expected, field.name


class Handed(Exception):
    """Raised by a stand-in for train() with the settings the command handed it."""

    def __init__(self, config):
        self.config = config


def test_every_training_setting_given_on_the_command_line_reaches_train(tmp_path, monkeypatch):
    from dataclasses import asdict, fields

    from typer.main import get_command

    import charrnn.training.train

    # a value other than the default, of the right kind, for every setting that is a string
    other = {"corpus": str(tmp_path / "c.txt"), "dataset": "timemachine", "val_file": str(tmp_path / "v.txt"),
             "normalize": "letters", "vocab": "bytes", "sampling": "random", "stream_offsets": "fixed",
             "unknown": "skip", "cell": "gru", "init": "book", "optimizer": "sgd", "lr_schedule": "plateau",
             "max_time": "90s", "device": "cpu", "amp": "bf16", "out": str(tmp_path / "run"), "sample_prefix": "The",
             "val_dir": str(tmp_path / "val"), "doc_sep": "<end>"}
    params = {param.name: param for param in get_command(app).commands["train"].params}
    defaults, expected, args = TrainConfig(), {}, []
    for field in fields(TrainConfig):
        if field.name == "auto_size":  # every size setting is given: the sizing rule chooses none
            expected[field.name] = []
            continue
        default, param = getattr(defaults, field.name), params[field.name]
        if field.name == "init_from":  # it reads a checkpoint and fixes the model's settings (tests/test_finetune.py)
            expected[field.name] = default
            continue
        if isinstance(default, bool):
            expected[field.name] = not default
            args.append(param.opts[0] if not default else param.secondary_opts[0])
            continue
        if field.name in other:
            value = other[field.name]
        else:
            assert isinstance(default, (int, float)), f"add a value for {field.name} to `other`"
            value = default + (1 if isinstance(default, int) else 0.25)
        expected[field.name] = value
        args += [str(value)] if param.param_type_name == "argument" else [param.opts[0], str(value)]

    def handed(config, reporter, resume=None, replay=None):
        raise Handed(config)

    monkeypatch.setattr(charrnn.training.train, "train", handed)
    result = CliRunner().invoke(app, ["train", *args])
    assert isinstance(result.exception, Handed), result.output
    assert asdict(result.exception.config) == expected


def test_an_option_left_at_its_default_leaves_the_presets_value(tmp_path, corpus):
    preset = tmp_path / "p.toml"
    preset.write_text('hidden = 12\nlr = 0.01\n')
    out = tmp_path / "run"
    result = invoke("train", corpus, "--config", preset, "--lr", str(TrainConfig().lr), "--max-steps", 1, "--batch-size", 2,
                    "--seq-len", 8, "--eval-every", 1, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    written = (out / "config.toml").read_text()
    assert "hidden = 12\n" in written  # from the preset: --hidden was not given
    assert f"lr = {TrainConfig().lr}\n" in written  # given, although it equals the default: it replaces the preset's


def test_the_cli_module_loads_neither_torch_nor_matplotlib():
    import subprocess

    root = Path(__file__).resolve().parents[1]
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, charrnn.cli.main; print('torch' in sys.modules, 'matplotlib' in sys.modules)"],
        capture_output=True, text=True, env={"PYTHONPATH": str(root)}, check=True).stdout.split()
    assert loaded == ["False", "False"]  # so that --help and argument errors stay fast


def test_shell_completion_comes_from_typer(monkeypatch):
    assert "--install-completion" in invoke("--help").output
    # the shell named, not detected from the parent processes (which need not include one)
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    assert "complete" in invoke("--show-completion", "bash").output
    completions = invoke(env={"_CHARRNN_COMPLETE": "complete_bash", "COMP_WORDS": "charrnn generate --top",
                              "COMP_CWORD": "2"})
    assert completions.output.split() == ["--top-k", "--top-p"]


# ---------------------------------------------------------------- schedules and early stopping


def test_early_stopping_and_plateau_from_the_command_line(corpus, tmp_path):
    # a gradient clipped to norm 1e-30 cannot move the weights: validation never improves
    # after the first evaluation, so plateau and patience act on a known schedule
    out = tmp_path / "stuck"
    result = invoke("train", corpus, *TINY, "--optimizer", "sgd", "--lr", "0.001", "--clip", "1e-30",
                    "--lr-schedule", "plateau", "--plateau-patience", 1, "--patience", 3,
                    "--eval-every", 2, "--max-steps", 100, "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 8]  # the third evaluation without a best stops it
    assert [r["lr"] for r in records] == [0.001, 0.001, 0.0005, 0.00025]
    final = [line for line in result.stdout.splitlines() if line.startswith(("done", "stopped"))]
    assert final and final[0].startswith("stopped early (no new best validation loss in 3 evaluations): 8 steps")
    from charrnn.storage.checkpoint import load_checkpoint

    progress = load_checkpoint(out / "last.pt")["progress"]
    assert progress["lr_scale"] == 0.125 and progress["evals_since_best"] == 3


def test_patience_takes_a_preset_and_may_change_on_resume(corpus, tmp_path):
    preset = tmp_path / "preset.toml"
    preset.write_text('lr_schedule = "plateau"\npatience = 5\nplateau_factor = 0.25\n')
    out = tmp_path / "preset-run"
    assert invoke("train", corpus, *TINY, "--config", preset, "--max-steps", 4, "--eval-every", 2, "-q",
                  "--out", out).exit_code == 0
    assert 'patience = 5' in (out / "config.toml").read_text()
    resumed = invoke("train", "--resume", out, "--max-steps", 6, "--patience", 2, "-q")
    assert resumed.exit_code == 0, resumed.output
    changed = invoke("train", "--resume", out, "--max-steps", 8, "--plateau-factor", 0.5)
    one_line_error(changed, "--plateau-factor cannot change")


def test_resume_continues_the_plateau_exactly(corpus, tmp_path):
    def run_training(out, max_steps, resume=None):
        args = ["train", "--resume", out] if resume else [
            "train", corpus, *TINY, "--lr", 0.3, "--lr-schedule", "plateau",
            "--plateau-patience", 1, "--eval-every", 2, "--out", out]
        result = invoke(*args, "--max-steps", max_steps, "-q")
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    straight = run_training(tmp_path / "straight", 40)
    # split where the plateau has lowered the rate once and will lower it again later (a rate
    # this high makes validation stall early)
    lrs = [r["lr"] for r in straight]
    first_lowered = next((i for i, lr in enumerate(lrs) if lr < lrs[0]), None)
    assert first_lowered is not None and lrs[-1] < lrs[first_lowered], f"the plateau did not fire twice: {lrs}"
    run_training(tmp_path / "split", straight[first_lowered]["step"])
    resumed = run_training(tmp_path / "split", 40, resume=True)
    timing = ("elapsed", "chars_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in timing} for r in straight]
    from charrnn.storage.checkpoint import load_checkpoint

    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["progress"]["lr_scale"] == b["progress"]["lr_scale"] < 1
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


# ---------------------------------------------------------------- what training prints


def test_plain_records_when_stdout_is_not_a_terminal(run):
    log = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [10, 20, 30]
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_output_is_one_line_per_evaluation_and_a_summary(corpus, tmp_path):
    out = tmp_path / "plain"
    result = invoke("train", corpus, *TINY, "--max-steps", 20, "--eval-every", 10, "--out", out)
    lines = result.stdout.splitlines()
    assert "\r" not in result.stdout and "\x1b" not in result.stdout
    assert lines[0].startswith("training a 1-layer LSTM")
    assert [line.split("|")[1].split() for line in lines[1:3]] == [["step", "10/20"], ["step", "20/20"]]
    assert lines[3].startswith("done: 20 steps") and "best" in lines[3]
    assert lines[4] == f"learning curve: {out / 'curve.png'}"


def test_quiet_prints_only_the_summary(corpus, tmp_path):
    result = invoke("train", corpus, *TINY, "--max-steps", 4, "--eval-every", 2, "--out", tmp_path / "q", "-q")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [result.stdout.strip()] and result.stdout.startswith("done: 4 steps")
    assert result.stderr == ""
    assert (tmp_path / "q" / "curve.png").is_file()


def render(renderable) -> str:
    console = Console(file=io.StringIO(), width=220, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_the_live_display_shows_validation_best_lr_and_eta():
    from charrnn.training.report import TerminalReporter

    console = Console(file=io.StringIO(), force_terminal=True, width=220)
    reporter = TerminalReporter(console)
    reporter.start({"run": "runs/x", "device": "cpu", "parameters": 1000, "vocab_size": 30, "train_chars": 9000,
                    "val_chars": 1000, "total_steps": 100, "max_time": math.inf, "step": 0,
                    "best_val_loss": math.inf, "batches_per_epoch": 10,
                    "config": {"layers": 1, "cell": "lstm", "hidden": 16, "lr": 0.002}})
    assert "val ppl - (best -)" in render(reporter.progress_bar)
    step = {"step": 40, "total_steps": 100, "loss": 1.5, "lr": 1e-3, "chars_per_s": 5000.0, "elapsed": 4.0,
            "max_time": math.inf, "epoch": 0}
    reporter.progress(step)
    record = {"step": 40, "epoch": 0, "elapsed": 4.0, "chars_seen": 1, "train_loss": 1.5, "train_ppl": 4.48,
              "val_loss": 1.2, "val_ppl": 3.32, "lr": 1e-3, "chars_per_s": 5000.0, "best": True}
    reporter.evaluation(record)
    reporter.evaluation({**record, "step": 50, "val_loss": 1.3, "val_ppl": 3.67, "best": False})
    reporter.progress({**step, "step": 50, "lr": 5e-4})
    shown = render(reporter.progress_bar)
    assert "step 50/100" in shown and "50%" in shown and "loss 1.500" in shown
    assert "val ppl 3.67 (best 3.32)" in shown and "lr 5.00e-04" in shown and "ETA" in shown
    reporter.finish({"run": "runs/x", "steps": 50, "elapsed": 5.0, "chars_seen": 1, "train_loss": 1.5,
                     "val_loss": 1.3, "val_ppl": 3.67, "best_val_loss": 1.2, "best_val_ppl": 3.32,
                     "chars_per_s": 5000.0, "interrupted": None, "stopped_early": False})
    assert "done: 50 steps" in console.file.getvalue()


def test_a_resumed_run_shows_its_best_so_far():
    from charrnn.training.report import TerminalReporter

    reporter = TerminalReporter(Console(file=io.StringIO(), force_terminal=True, width=220))
    reporter.start({"run": "r", "device": "cpu", "parameters": 1, "vocab_size": 2, "train_chars": 9, "val_chars": 1,
                    "total_steps": 10, "max_time": math.inf, "step": 5, "best_val_loss": math.log(2.5),
                    "batches_per_epoch": 1, "config": {"layers": 1, "cell": "gru", "hidden": 8, "lr": 0.1}})
    assert "(best 2.50)" in render(reporter.progress_bar)
    reporter.progress_bar.stop()


class InterruptingReporter(Reporter):
    """Sends this process SIGINT (as Ctrl-C does) at the first progress report."""

    def __init__(self, console):
        from charrnn.training.report import TerminalReporter

        self.terminal = TerminalReporter(console)

    def start(self, info):
        self.terminal.start(info)

    def progress(self, info):
        signal.raise_signal(signal.SIGINT)

    def evaluation(self, record):
        self.terminal.evaluation(record)

    def finish(self, summary):
        self.terminal.finish(summary)


def test_an_interrupted_run_says_it_stopped(corpus, tmp_path):
    console = Console(file=io.StringIO(), width=200)
    config = TrainConfig(corpus=str(corpus), hidden=8, batch_size=4, seq_len=16, max_steps=50, eval_every=3,
                         out=str(tmp_path / "stopped"))
    summary = train(config, InterruptingReporter(console))
    assert summary["interrupted"] == "SIGINT"
    last = console.file.getvalue().strip().splitlines()[-1]
    # the first progress report comes at the first evaluation or after half a second
    assert last.startswith(f"stopped by SIGINT: {summary['steps']} steps") and summary["steps"] <= 3


# ---------------------------------------------------------------- learning curves


def test_plot_draws_several_runs_on_one_figure(run, corpus, tmp_path, monkeypatch):
    other = tmp_path / "other"
    assert invoke("train", corpus, "--hidden", 8, "--batch-size", 4, "--seq-len", 16, "--cell", "gru",
                  "--max-steps", 12, "--eval-every", 4, "--out", other, "-q").exit_code == 0
    from charrnn.training import plot

    drawn = {}
    real_close = plot.pyplot().close

    def keep_figure(fig):  # look at the figure before it is closed
        ax = fig.axes[0]
        drawn["labels"] = ax.get_legend_handles_labels()[1] + [t.get_text() for t in ax.get_legend().texts]
        drawn["scale"] = ax.get_yscale()
        drawn["lines"] = [(line.get_linestyle(), len(line.get_xdata())) for line in ax.get_lines()]
        real_close(fig)

    monkeypatch.setattr(plot.pyplot(), "close", keep_figure)
    monkeypatch.chdir(tmp_path)
    result = invoke("plot", run, other)
    assert result.exit_code == 0 and result.stdout.strip() == "wrote curves.png"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert {"tiny", "other", "validation", "train"} <= set(drawn["labels"])
    assert drawn["scale"] == "log"
    assert drawn["lines"] == [("--", 3), ("-", 3), ("--", 3), ("-", 3)]
    svg = invoke("plot", other, "--out", tmp_path / "other.svg")
    assert svg.exit_code == 0 and (tmp_path / "other.svg").read_text().lstrip().startswith("<?xml")


def test_plot_explains_what_is_wrong(tmp_path, monkeypatch):
    one_line_error(invoke("plot", tmp_path / "nowhere"), "run not found")
    one_line_error(invoke("plot", tmp_path), "no metrics.jsonl in")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    one_line_error(invoke("plot", tmp_path), "line 1: not an evaluation record")
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("plot"), "runs/latest")


def test_without_matplotlib_training_works_and_plot_says_how_to_get_it(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "no-mpl"
    result = invoke("train", corpus, *TINY, "--max-steps", 4, "--eval-every", 2, "--out", out)
    assert result.exit_code == 0
    assert result.stderr.strip() == ("curve.png skipped: matplotlib is not installed "
                                     "(pip install matplotlib)")
    assert (out / "best.pt").is_file() and not (out / "curve.png").exists()
    one_line_error(invoke("plot", out), "matplotlib is not installed (pip install matplotlib)")


# ---------------------------------------------------------------- generation


def nucleus_size(probs: torch.Tensor, top_p: float) -> int:
    """The fewest most likely characters whose probabilities add up to top_p."""
    total, size = 0.0, 0
    for p in sorted(probs.tolist(), reverse=True):
        if total >= top_p:
            break
        total, size = total + p, size + 1
    return size


def noise_for(logits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    from charrnn.generation.sample import gumbel_noise

    return gumbel_noise(1, *logits.shape, torch.Generator().manual_seed(seed), "cpu")[0].to(logits.dtype)


def test_top_p_samples_only_the_nucleus():
    from charrnn.generation.sample import choose

    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log().expand(4000, -1)

    def drawn(temperature=1.0, top_k=0, top_p=1.0):
        return set(choose(logits, temperature, top_k, False, noise_for(logits), top_p=top_p).tolist())

    assert drawn(top_p=0.7) == {1, 3}
    assert drawn(top_p=0.5) == {1}
    assert drawn(top_p=0.81) == {1, 2, 3}
    assert drawn(top_p=1.0) == {0, 1, 2, 3}
    assert drawn(top_k=2, top_p=0.99) == {1, 3}  # top-k first
    assert drawn(temperature=0.25, top_p=0.7) == {1}  # the nucleus of the tempered distribution (0.88 on 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12), st.floats(0.01, 1.0))
def test_top_p_never_samples_outside_the_nucleus(logit_values, top_p):
    from charrnn.generation.sample import choose

    logits = torch.tensor(logit_values, dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    rank = {i: r for r, i in enumerate(sorted(range(len(probs)), key=lambda i: (-probs[i].item(), i)))}
    rows = logits.expand(200, -1)
    picked = choose(rows, 1.0, 0, False, noise_for(rows, 1), top_p=top_p)
    # ties at the nucleus edge may go either way; nothing ranked beyond the nucleus and its ties
    limit = nucleus_size(probs, top_p)
    edge = sorted(probs.tolist(), reverse=True)[limit - 1]
    assert all(rank[i] < limit or math.isclose(probs[i].item(), edge, rel_tol=1e-9) for i in picked.tolist())


def test_generate_json_for_scripts(run):
    args = ("generate", "--checkpoint", run, "--prefix", "the ", "--length", 25, "--samples", 3, "--seed", 7,
            "--top-p", 0.9, "--json")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["prefix"] == "the " and len(answer["samples"]) == 3
    assert all(len(s) == 25 for s in answer["samples"])
    assert answer["settings"] == {"checkpoint": str(run / "best.pt"), "length": 25, "temperature": 1.0,
                                  "top_k": 0, "top_p": 0.9, "greedy": False, "seed": 7}
    assert json.loads(invoke(*args).stdout) == answer  # the seed repeats it


def test_prefix_file_primes_the_state_and_only_the_continuation_is_printed(run, corpus, tmp_path):
    prime = tmp_path / "prime.txt"
    prime.write_text(corpus.read_text()[:500])
    from_file = invoke("generate", "--checkpoint", run, "--prefix-file", prime, "--length", 30, "--greedy")
    from_option = invoke("generate", "--checkpoint", run, "--prefix", prime.read_text(), "--length", 30,
                         "--greedy")
    assert from_file.exit_code == 0
    assert from_option.stdout == prime.read_text() + from_file.stdout
    assert len(from_file.stdout) == 31
    one_line_error(invoke("generate", "--checkpoint", run, "--prefix-file", prime, "--prefix", "x"),
                   "--prefix or --prefix-file, not both")
    one_line_error(invoke("generate", "--checkpoint", run, "--prefix-file", tmp_path / "missing.txt"),
                   "prefix file not found")
    (tmp_path / "odd.txt").write_text("the Zebra")
    one_line_error(invoke("generate", "--checkpoint", run, "--prefix-file", tmp_path / "odd.txt"),
                   "odd.txt has 1 distinct character not in the model's vocabulary (1 occurrence): 'Z'")


@pytest.mark.parametrize("option, value", [("--top-p", 0), ("--top-p", 1.5), ("--top-k", -1),
                                           ("--length", -1), ("--temperature", -1)])
def test_generate_rejects_bad_settings_in_one_line(run, option, value):
    one_line_error(invoke("generate", "--checkpoint", run, option, value), option)


def test_interactive_prompt_continues_from_the_kept_state(run):
    from charrnn.storage.load import load_model
    from charrnn.generation.sample import generate

    result = invoke("generate", "--checkpoint", run, "--interactive", "--greedy", "--length", 12,
                    input="the \n\nso, \n")
    assert result.exit_code == 0, result.output
    model, vocab, _ = load_model(run, "cpu")
    # each answer continues everything typed and generated before it
    history, expected = "", ""
    for typed in ["the ", "", "so, "]:
        history += typed
        reply = "".join(c[0] for c in generate(model, vocab, history, 12, greedy=True))
        history += reply
        expected += f"> {reply}\n"
    assert result.stdout == expected + "> \n"  # the last prompt meets the end of input
    assert "Ctrl-D" in result.stderr


def test_interactive_prompt_reports_unknown_characters_and_goes_on(run):
    from charrnn.storage.load import load_model
    from charrnn.generation.sample import generate

    result = invoke("generate", "--checkpoint", run, "-i", "--length", 5, "--greedy", input="The\nthe\n")
    assert result.exit_code == 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: that line has 1 distinct character not in the model's vocabulary (1 occurrence): 'T'"]
    model, vocab, _ = load_model(run, "cpu")
    reply = "".join(c[0] for c in generate(model, vocab, "the", 5, greedy=True))  # the bad line left no trace
    assert result.stdout == f"> > {reply}\n> \n"


def test_interactive_takes_neither_json_nor_samples(run):
    one_line_error(invoke("generate", "--checkpoint", run, "-i", "--json"), "--interactive")
    one_line_error(invoke("generate", "--checkpoint", run, "-i", "--samples", 2), "--interactive")


def test_a_sampler_stopped_early_keeps_a_consistent_state(run):
    from charrnn.storage.load import load_model
    from charrnn.generation.sample import GenerationStream, generate

    model, vocab, _ = load_model(run, "cpu")
    stream = GenerationStream(model, vocab, greedy=True)
    stream.feed("the ")
    steps = stream.sample(10)
    first = [next(steps)[0] for _ in range(3)]
    steps.close()  # a caller that stops early
    rest = [c[0] for c in stream.sample(5)]
    assert first + rest == [c[0] for c in generate(model, vocab, "the ", 8, greedy=True)]


# ---------------------------------------------------------------- info


def test_info_describes_model_vocabulary_training_and_corpus(run, corpus):
    result = invoke("info", run)
    assert result.exit_code == 0, result.output
    lines = dict(line.split(None, 1) for line in result.stdout.splitlines())
    from charrnn.storage.load import load_model
    from charrnn.model import num_parameters

    model, vocab, _ = load_model(run, "cpu")
    assert lines["checkpoint"] == str(run / "best.pt")
    assert lines["model"] == f"LSTM, 1 layer of 16 hidden; {num_parameters(model):,} parameters"
    assert lines["vocabulary"].startswith(f'{len(vocab)} characters: "\\n &,;<>')  # newline escaped, sorted
    assert lines["training"].startswith("30 steps, 1,920 characters seen")
    assert lines["corpus"] == f"{corpus.resolve()}, last 10% for validation"
    assert lines["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()

    details = json.loads(invoke("info", run / "last.pt", "--json").stdout)
    assert details["model"]["parameters"] == num_parameters(model)
    assert details["vocabulary"]["characters"] == vocab.idx_to_token
    assert details["training"]["steps"] == 30 and details["training"]["best_val_ppl"] > 1
    assert details["corpus"]["sha256"] == lines["sha256"]


def test_info_errors_are_one_line(tmp_path):
    one_line_error(invoke("info", tmp_path / "missing.pt"), "checkpoint not found")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    one_line_error(invoke("info", tmp_path / "junk.pt"), "junk.pt")


# ---------------------------------------------------------------- surprisal and eval --show


def test_surprisal_is_the_loss_of_one_stream_in_bits(run, corpus):
    from charrnn.storage.load import load_model
    from charrnn.inspection.surprisal import surprisal
    from charrnn.scoring.evaluation import evaluate

    model, vocab, _ = load_model(run, "cpu")
    text = corpus.read_text()[:700]
    bits = surprisal(model, vocab, text)
    assert len(bits) == len(text) - 1  # the first character has no prediction
    loss_sum, count = evaluate(model, vocab.encode(text), batch_size=1, seq_len=64)
    assert count == len(bits)
    assert sum(bits) * math.log(2) == pytest.approx(loss_sum, rel=1e-5)
    assert surprisal(model, vocab, text, chunk=7) == pytest.approx(bits, rel=1e-5)  # the state is carried


def test_shading_follows_whole_bits_and_leaves_the_first_character_plain():
    from charrnn.inspection.surprisal import SHADES, shaded_text

    text = "abcde"
    shaded = shaded_text(text, [0.2, 1.5, 3.9, math.inf])
    assert shaded.plain == text

    def background(i):
        styles = [span.style for span in shaded.spans if span.start <= i < span.end]
        return styles[0].bgcolor.name if styles and styles[0].bgcolor else None

    assert [background(i) for i in range(5)] == [None, None, SHADES[1], SHADES[3], SHADES[-1]]
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor")
    console.print(shaded)
    assert "\x1b[" in console.file.getvalue() and "48;2;" in console.file.getvalue()  # truecolor backgrounds


def test_eval_show_prints_the_text_a_legend_and_the_perplexity(run, corpus):
    text = corpus.read_text()
    result = invoke("eval", corpus, "--checkpoint", run, "--show", "--show-chars", 120)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(text[:120] + "\n")
    lines = result.stdout[len(text[:120]) + 1:].splitlines()
    assert lines[0].startswith("surprisal, bits per character:") and "8+" in lines[0]
    assert lines[1].startswith("perplexity ") and lines[1].endswith(f"on the first 120 characters of {corpus}")
    assert lines[2].startswith(f"{corpus}: perplexity")
    one_line_error(invoke("eval", "--checkpoint", run, "--show", "--json"), "--show")
    one_line_error(invoke("eval", "--checkpoint", run, "--show", "--show-chars", 1), "--show-chars")


def test_eval_show_html_writes_a_self_contained_page(run, corpus, tmp_path):
    page = tmp_path / "shaded.html"
    result = invoke("eval", corpus, "--checkpoint", run, "--show-html", page, "--show-chars", 400)
    assert result.exit_code == 0 and result.stdout.startswith(f"{corpus}: perplexity")
    html_text = page.read_text()
    text = corpus.read_text()[:400]
    assert html_text.startswith("<!DOCTYPE html>") and "<style>" in html_text
    assert "<script" not in html_text and "http" not in html_text and "src=" not in html_text
    assert f"<title>perplexity " in html_text and f"on the first 400 characters of {corpus}</title>" in html_text
    body = html_text.split("<pre>", 1)[1].split("</pre>", 1)[0]
    assert "&lt;" in body and "&amp;" in body and "<it>" not in body  # the text is escaped
    import html as html_module
    import re

    assert html_module.unescape(re.sub(r"<[^>]+>", "", body)) == text  # every character, newlines included
    assert body.count('title="') == len(text) - 1
    one_line_error(invoke("eval", corpus, "--checkpoint", run, "--show-html", tmp_path / "no" / "x.html"),
                   "cannot write")


def test_the_readme_shows_the_committed_curve():
    root = Path(__file__).resolve().parents[1]
    curve = root / "docs" / "curve.png"
    assert "](docs/curve.png)" in (root / "README.md").read_text()
    assert curve.read_bytes()[:4] == b"\x89PNG" and curve.stat().st_size < 100_000


def test_a_reader_that_stops_early_ends_generate_quietly(run):
    """`charrnn generate | head`: when the reader closes the pipe, generate stops with no
    error line and SIGPIPE's exit status (141), as `yes | head` does."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "generate", "--checkpoint", str(run),
                             "--length", "400000", "--seed", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PYTHONPATH": str(root)})
    assert len(proc.stdout.read(10)) == 10
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


def test_an_output_that_cannot_show_a_character_gets_an_escape(tmp_path):
    """A stdout that cannot encode every character (here ASCII) shows the others as escapes
    instead of failing with UnicodeEncodeError."""
    import subprocess

    (tmp_path / "c.txt").write_text("héllo wörld 🙂 " * 200, encoding="utf-8")
    assert invoke("train", tmp_path / "c.txt", *TINY, "--max-steps", 2, "--out", tmp_path / "run").exit_code == 0
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "charrnn", "generate", "--checkpoint", str(tmp_path / "run"),
                           "--prefix", "héllo 🙂", "--length", "20", "--seed", "0"], capture_output=True,
                          env={"PYTHONPATH": str(root), "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"h\\xe9llo \\U0001f642")
