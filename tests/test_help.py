"""Every command's --help shows its real defaults, derived from the commands' own
parameters (a new option is covered without a change here); --threads on every command
that computes."""

from __future__ import annotations

import re

import pytest
import torch
from typer.main import get_command
from typer.testing import CliRunner

from charrnn.cli.main import app

COMMANDS = get_command(app).commands
ROW = re.compile(r"│ {1,4}(-[-\w]+|\w+)")  # an option's or argument's first line; deeper lines continue it


def help_rows(command: str) -> dict[str, str]:
    """{option or argument name: its row of the help, the lines joined}, at a width where
    nothing has to wrap mid-value."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    output = result.stdout
    rows, name = {}, None
    for line in output.splitlines():
        found = ROW.match(line)
        if found:
            name = found.group(1)
            rows[name] = ""
        if name and line.startswith("│"):
            rows[name] += " " + " ".join(line.strip("│ ").split())
        if line.startswith("╰"):
            name = None
    return rows


def expected_default(param) -> str | None:
    """What the help must say of a parameter's default: "[default: X]" for a value, the
    option typer names for a --x/--no-x flag, the word "[default:" or "empty" where the
    help text says it in words (show_default=False); None where there is no default to
    show: not given (None) or a flag left off."""
    default = param.default
    if default is None or (getattr(param, "is_flag", False) and not param.secondary_opts and default is False):
        return None
    if param.show_default is False or default == "":
        return "[default:|empty"
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return f"[default: {(param.opts if default else param.secondary_opts)[0].lstrip('-')}]"
    return f"[default: {default}]"


CASES = [(name, param) for name, command in COMMANDS.items() for param in command.params]


@pytest.mark.parametrize("command, param", CASES, ids=[f"{c}-{p.name}" for c, p in CASES])
def test_the_help_shows_each_default(command, param):
    expected = expected_default(param)
    if expected is None:
        return
    rows = help_rows(command)
    name = param.opts[0] if param.param_type_name == "option" else param.name
    assert name in rows, f"{name} has no row in `charrnn {command} --help`"
    assert re.search("|".join(re.escape(e) for e in expected.split("|")), rows[name]), (
        f"`charrnn {command} --help` does not show {expected!r} for {name}: {rows[name]!r}")


def test_every_command_is_covered():
    """The main commands each have defaults to show (a parser change that found none would pass vacuously)."""
    for name in ("train", "generate", "eval", "neurons", "serve", "plot"):
        assert any(expected_default(p) for p in COMMANDS[name].params), name


# ---------------------------------------------------------------- --threads


COMPUTING = ("train", "generate", "eval", "neurons", "serve")


@pytest.mark.parametrize("command", COMPUTING)
def test_every_computing_command_has_threads_with_one_default_and_help(command):
    threads = {p.name: p for p in COMMANDS[command].params}["threads"]
    train_threads = {p.name: p for p in COMMANDS["train"].params}["threads"]
    assert threads.default == train_threads.default == 0
    assert threads.help.split("(0: ")[0] == train_threads.help.split("(0: ")[0]  # one text, `0:` said per command


@pytest.mark.parametrize("command", ["generate", "eval", "neurons", "serve"])
def test_a_negative_thread_count_is_one_line(cli, trained_run, command):
    cli(command, "--checkpoint", trained_run, "--threads", "-1").assert_one_line_error("--threads")


@pytest.mark.parametrize("args", [("eval",), ("neurons",), ("generate", "--length", "5", "--samples", "2")])
def test_threads_sets_torchs_threads(cli, trained_run, args):
    try:
        cli(*args, "--checkpoint", trained_run, "--threads", "2").assert_ok()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_generate_keeps_one_thread_for_one_sample_unless_told(cli, trained_run):
    torch.set_num_threads(2)
    try:
        cli("generate", "--checkpoint", trained_run, "--length", "5").assert_ok()
        assert torch.get_num_threads() == 1
        cli("generate", "--checkpoint", trained_run, "--length", "5", "--threads", "2").assert_ok()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
