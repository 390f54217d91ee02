"""generate's ways to stop and choose text, through the CLI: --stop/--include-stop,
--output and --beam (see docs/generate.md)."""

from __future__ import annotations

import json

import pytest
import torch

from charrnn.storage.load import load_model
from charrnn.generation.stops import StopScanner, parse_stops

PREFIX = "The time "


def gen(cli, run, *args) -> str:
    return cli("generate", "--checkpoint", run, "--prefix", PREFIX, *args).assert_ok().stdout


def continuation(cli, run, *args) -> str:
    out = gen(cli, run, *args)
    assert out.startswith(PREFIX) and out.endswith("\n")
    return out[len(PREFIX):-1]


# ---------------------------------------------------------------- --stop


def test_stop_ends_at_the_first_occurrence(cli, trained_run):
    full = continuation(cli, trained_run, "--length", "60", "--seed", "3")
    stop = full[20:22]
    at = full.index(stop)
    assert continuation(cli, trained_run, "--length", "60", "--seed", "3", "--stop", stop) == full[:at]
    assert continuation(cli, trained_run, "--length", "60", "--seed", "3", "--stop", stop,
                        "--include-stop") == full[: at + 2]
    # several stop strings: the first to occur wins; one that never occurs changes nothing
    other = full[40:43]
    first = min(at, full.index(other))
    assert continuation(cli, trained_run, "--length", "60", "--seed", "3", "--stop", other,
                        "--stop", stop) == full[:first]
    assert continuation(cli, trained_run, "--length", "60", "--seed", "3", "--stop", "xyxy") == full


def test_each_sample_stops_on_its_own(cli, trained_run):
    args = ("--length", "40", "--samples", "3", "--seed", "1", "--json")
    full = json.loads(gen(cli, trained_run, *args))["samples"]
    stopped = json.loads(gen(cli, trained_run, *args, "--stop", " "))
    assert stopped["samples"] == [text.split(" ", 1)[0] for text in full]
    assert stopped["settings"]["stop"] == [" "] and stopped["settings"]["include_stop"] is False


@pytest.mark.parametrize("stop,fragment", [("", "must not be empty"), ("Ω", "can never occur")])
def test_a_stop_string_that_cannot_work_is_one_line(cli, trained_run, stop, fragment):
    cli("generate", "--checkpoint", trained_run, "--stop", stop).assert_one_line_error("--stop", fragment)


def test_stop_escapes_and_held_back_text():
    assert parse_stops([r"\n\n", r"a\tb", r"\\n", r"\q", r"\x03", r"\x4"]) == ["\n\n", "a\tb", "\\n", "\\q", "\x03", "\\x4"]
    scanner = StopScanner(["\n\n", "END"])
    # "E" and "\n" might begin a stop string: they are held until they cannot
    released = [scanner.push(c) for c in "ab\nEx\nEN\n\nafter"]
    assert "".join(released) == "ab\nEx\nEN" and scanner.stopped
    kept = StopScanner(["END"], include=True)
    assert "".join(kept.push(c) for c in "xxENDyy") == "xxEND"
    unfinished = StopScanner(["END"])
    assert unfinished.push("aEN") == "a" and unfinished.flush() == "EN"


# ---------------------------------------------------------------- --output


def test_output_writes_what_would_be_printed(cli, trained_run, tmp_path):
    for args in (("--length", "30"), ("--length", "30", "--samples", "2"), ("--length", "30", "--json"),
                 ("--length", "30", "--beam", "2")):
        seeded = (*args, "--seed", "4") if "--beam" not in args else args
        printed = gen(cli, trained_run, *seeded)
        target = tmp_path / "out.txt"
        result = cli("generate", "--checkpoint", trained_run, "--prefix", PREFIX, *seeded, "--output", target)
        assert result.assert_ok().stdout == ""
        assert target.read_bytes() == printed.encode("utf-8")
        assert result.stderr.strip() == f"wrote {target}"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary file left behind


def test_output_into_a_missing_directory_is_one_line(cli, trained_run, tmp_path):
    cli("generate", "--checkpoint", trained_run, "--output", tmp_path / "no" / "out.txt") \
        .assert_one_line_error("cannot write", "out.txt")


# ---------------------------------------------------------------- --beam


def log_probability(model, vocab, prefix: str, text: str) -> float:
    """log P(text | prefix) by teacher forcing the whole string through the model."""
    ids = vocab.encode(prefix + text).long()[None]
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    logp = torch.log_softmax(logits[0].double(), -1)
    return sum(logp[t, ids[0, t + 1]].item() for t in range(len(prefix) - 1, ids.shape[1] - 1))


def test_beam_finds_likely_continuations_with_their_log_probabilities(cli, trained_run):
    found = json.loads(gen(cli, trained_run, "--length", "12", "--beam", "4", "--json"))
    assert found["prefix"] == PREFIX and found["settings"]["beam"] == 4
    beams = found["beams"]
    assert len(beams) == 4 and len({b["text"] for b in beams}) == 4
    assert all(len(b["text"]) == 12 for b in beams)
    scores = [b["log_probability"] for b in beams]
    assert scores == sorted(scores, reverse=True)
    model, vocab, _ = load_model(trained_run, "cpu")
    for b in beams:
        assert b["log_probability"] == pytest.approx(log_probability(model, vocab, PREFIX, b["text"]), abs=1e-4)
    # a beam of one is greedy decoding
    greedy = continuation(cli, trained_run, "--length", "12", "--greedy")
    assert json.loads(gen(cli, trained_run, "--length", "12", "--beam", "1", "--json"))["beams"][0]["text"] == greedy
    # (a narrower beam may find another best: printed and --json agree for the same width)
    two = json.loads(gen(cli, trained_run, "--length", "12", "--beam", "2", "--json"))["beams"]
    printed = gen(cli, trained_run, "--length", "12", "--beam", "2")
    assert printed.startswith(f"--- beam 1: log-probability {two[0]['log_probability']:.3f} ---\n"
                              f"{PREFIX}{two[0]['text']}\n")


@pytest.mark.parametrize("args,fragment", [(("--beam", "0"), "--beam must be at least 1"),
                                           (("--beam", "2", "--samples", "2"), "--samples"),
                                           (("--beam", "2", "--temperature", "0.5", "--stop", "x"), "--temperature, --stop")])
def test_beam_rejects_what_it_cannot_use(cli, trained_run, args, fragment):
    cli("generate", "--checkpoint", trained_run, *args).assert_one_line_error(fragment)


def test_each_interactive_answer_ends_at_a_stop_string(trained_run):
    from typer.testing import CliRunner

    from charrnn.cli.main import app

    def answers(*extra):
        args = ["generate", "--checkpoint", str(trained_run), "--interactive", "--greedy", "--length", "30", *extra]
        result = CliRunner().invoke(app, args, input="the \n")
        assert result.exit_code == 0, result.output
        return result.stdout

    full = answers()
    answer = full.split("> ", 1)[1].split("\n", 1)[0]
    stop = answer[10:12]
    assert answers("--stop", stop) == full.replace(answer, answer[: answer.index(stop)])


# ---------------------------------------------------------------- the defaults


def test_every_sampling_default_is_sampling_config_s():
    """generate's options, the library's GenerationStream and generate, and serve's
    requests take their defaults from one SamplingConfig."""
    import inspect
    from dataclasses import asdict

    from charrnn.cli.generate import generate as generate_command
    from charrnn.config import SamplingConfig
    from charrnn.generation.sample import GenerationStream, generate

    defaults = asdict(SamplingConfig())
    for function in (generate_command, generate, GenerationStream.__init__):
        given = {name: p.default for name, p in inspect.signature(function).parameters.items() if name in defaults}
        assert given == {k: v for k, v in defaults.items() if k in given} and len(given) >= 6, function
    pytest.importorskip("starlette")
    from charrnn.serve import GENERATE_FIELDS

    served = {name: default for name, (_, default) in GENERATE_FIELDS.items() if name in defaults}
    assert served == {k: v for k, v in defaults.items() if k in served} and len(served) == 6
