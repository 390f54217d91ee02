"""Dynamic evaluation: no look-ahead, the checkpoint untouched, a learning rate of 0 is the
static figure, every cell and stacked layers adapt, on the CPU and CUDA where available;
`eval --dynamic` and `generate --adapt` through the CLI."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from charrnn.vocab import Vocab
from charrnn.dynamic import DynamicEvaluation, DynamicSettings, dynamic_evaluate, gradient_rms
from charrnn.evaluation import evaluate
from charrnn.model import ModelConfig, build_model

from conftest import make_text

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
VOCAB = Vocab("abcdefghij ")


def tiny_model(cell="lstm", layers=1, device="cpu"):
    torch.manual_seed(0)
    return build_model(ModelConfig(len(VOCAB), cell, 16, layers, init_sigma=0.3)).to(device)


def random_ids(n, seed):
    rng = random.Random(seed)
    return VOCAB.encode("".join(rng.choice("abcdefghij ") for _ in range(n)))


def test_no_look_ahead():
    """Changing the characters after position k changes no loss at or before k."""
    model = tiny_model()
    rms = gradient_rms(model, random_ids(2000, 1), 10)
    settings = DynamicSettings(seq_len=10, lr=1e-2, decay=0.01)
    text = random_ids(95, 2)
    for k in (9, 10, 11, 37, 60):
        changed = text.clone()
        changed[k + 1 :] = (changed[k + 1 :] + 1) % len(VOCAB)
        losses = [DynamicEvaluation(tiny_model(), rms, settings).read(t)[0] for t in (text, changed)]
        # losses[i] is the loss of character i + 1: those of characters up to k must agree
        assert torch.equal(losses[0][:k], losses[1][:k])
        assert not torch.equal(losses[0][k:], losses[1][k:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell, layers", [("rnn", 1), ("gru", 1), ("lstm", 1), ("gru", 2), ("lstm", 2)])
def test_every_cell_adapts_to_a_repetitive_text(cell, layers, device):
    model = tiny_model(cell, layers, device)
    trained = [p.detach().clone() for p in model.parameters()]
    rms = gradient_rms(model, random_ids(1000, 3), 20)
    phrase = random_ids(23, 4)
    text = phrase.repeat(30)  # a text that repeats itself: reading it, the model should learn it
    static, count = evaluate(model, text, batch_size=1, seq_len=20)
    dynamic, dynamic_count = dynamic_evaluate(model, text, rms, DynamicSettings(seq_len=20, lr=1e-3, decay=0.0))
    assert dynamic_count == count == len(text) - 1
    assert dynamic / count < static / count - 0.2
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))  # restored
    assert model.training  # the mode it was in


def test_a_learning_rate_of_zero_is_the_static_figure():
    model = tiny_model("gru", 2)
    rms = gradient_rms(model, random_ids(1000, 5), 10)
    text = random_ids(300, 6)
    static, count = evaluate(model, text, batch_size=1, seq_len=10)
    dynamic, _ = dynamic_evaluate(model, text, rms, DynamicSettings(seq_len=10, lr=0.0, decay=0.5))
    assert dynamic / count == pytest.approx(static / count, abs=1e-6)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_dynamic_through_the_cli(cli, trained_run):
    before = {p.name: sha256(p) for p in trained_run.glob("*.pt")}
    result = json.loads(cli("eval", "--checkpoint", trained_run, "--json", "--dynamic", "--dyn-lr", "1e-3",
                            "--dyn-seq-len", "20").assert_ok().stdout)
    figures = result["dynamic"]
    assert figures["chars"] == result["chars"]
    assert figures["gain"] == pytest.approx(figures["static"]["loss"] - figures["dynamic"]["loss"])
    assert figures["dynamic"]["loss"] != figures["static"]["loss"]
    assert figures["settings"]["lr"] == 1e-3 and figures["settings"]["seq_len"] == 20
    assert {p.name: sha256(p) for p in trained_run.glob("*.pt")} == before  # byte-identical
    human = cli("eval", "--checkpoint", trained_run, "--dynamic").assert_ok().stdout
    assert "static" in human and "dynamic" in human and "gain" in human


def test_eval_dynamic_with_a_learning_rate_of_zero_through_the_cli(cli, trained_run):
    result = json.loads(cli("eval", "--checkpoint", trained_run, "--json", "--dynamic", "--dyn-lr", "0")
                        .assert_ok().stdout)
    assert result["dynamic"]["dynamic"]["loss"] == pytest.approx(result["dynamic"]["static"]["loss"], abs=1e-6)
    assert result["dynamic"]["gain"] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("option, value, fragment", [("--dyn-lr", "-1", "--dyn-lr"), ("--dyn-decay", "2", "--dyn-decay"),
                                                     ("--dyn-seq-len", "0", "--dyn-seq-len")])
def test_eval_dynamic_bad_settings(cli, trained_run, option, value, fragment):
    cli("eval", "--checkpoint", trained_run, "--dynamic", option, value).assert_one_line_error(fragment)


def test_generate_adapt(cli, trained_run, tmp_path):
    before = sha256(trained_run / "best.pt")
    style = tmp_path / "style.txt"
    style.write_text(make_text(600, seed=9) + "\u2603", encoding="utf-8")  # a snowman the model lacks
    args = ("generate", "--checkpoint", trained_run, "--length", "40", "--seed", "1", "--prefix", "The ")
    adapted = cli(*args, "--adapt", style, "--dyn-lr", "0.01").assert_ok()
    plain = cli(*args).assert_ok()
    assert adapted.stdout.startswith("The ") and len(adapted.stdout) == len("The ") + 40 + 1
    assert adapted.stdout != plain.stdout
    assert "dropped 1 occurrence" in adapted.stderr  # the snowman, dropped with a warning
    assert sha256(trained_run / "best.pt") == before
    several = json.loads(cli(*args, "--adapt", style, "--dyn-lr", "0.01", "--samples", "3", "--json").assert_ok().stdout)
    assert len(several["samples"]) == 3 and all(len(s) == 40 for s in several["samples"])
    cli(*args, "--adapt", style, "--dyn-decay", "-1").assert_one_line_error("--dyn-decay")


def test_the_help_shows_the_defaults_the_library_uses(cli):
    from dataclasses import fields

    defaults = {f.name: f.default for f in fields(DynamicSettings)}
    def words(output: str) -> str:  # the help's text without its box drawing and line breaks
        return " ".join(output.replace("│", " ").split())

    help_text = words(cli("eval", "--help").assert_ok().stdout)
    for name in ("seq_len", "lr", "decay"):
        assert f"[default: {defaults[name]:g}]" in help_text, name
    adapt_help = words(cli("generate", "--help").assert_ok().stdout)
    assert f"[default: {defaults['lr']:g}]" in adapt_help and f"[default: {defaults['decay']:g}]" in adapt_help
