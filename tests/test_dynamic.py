"""Dynamic evaluation: no look-ahead, the checkpoint untouched, a learning rate of 0 is the
static figure, every cell and stacked layers adapt, on the CPU and CUDA where available;
`eval --dynamic` and `generate --adapt` through the CLI."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from charrnn.corpus.vocab import Vocab
from charrnn.scoring.dynamic import (DynamicEvaluation, DynamicSettings, compare, dynamic_evaluate, gradient_rms,
                             training_tail, tune)
from charrnn.scoring.evaluation import evaluate
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
    from charrnn.config import DYNAMIC_DECAYS, DYNAMIC_LRS

    defaults = DynamicSettings()
    def words(output: str) -> str:  # the help's text without its box drawing and line breaks
        return " ".join(output.replace("│", " ").split())

    rates = ", ".join(f"{lr:g}" for lr in DYNAMIC_LRS)
    help_text = words(cli("eval", "--help").assert_ok().stdout)
    assert f"[default: {defaults.seq_len}]" in help_text
    assert f"among {rates}]" in help_text and f"among {', '.join(f'{d:g}' for d in DYNAMIC_DECAYS)}]" in help_text
    assert f"--dyn-decay {defaults.decay:g} unless given" in help_text and f"--dyn-lr {defaults.lr:g} unless given" in help_text
    adapt_help = words(cli("generate", "--help").assert_ok().stdout)
    assert f"tuned on the adapt text, among {rates}]" in adapt_help


# ---------------------------------------------------------------- tuning lr and decay


def repetitive_ids(repeats=12):
    return random_ids(23, 4).repeat(repeats)  # a text that repeats itself: adapting to it pays


def test_tuning_picks_the_best_candidate_on_the_tail():
    model = tiny_model()
    rms = gradient_rms(model, random_ids(1000, 3), 20)
    tail = repetitive_ids()
    lrs, decays = (1e-4, 1e-3, 1e-2), (0.0, 0.5)
    heard = []
    tuning = tune(model, tail, rms, 20, lrs, decays, on_result=lambda s, loss, static: heard.append((s, loss, static)))
    def loss_of(lr, decay):
        total, count = dynamic_evaluate(model, tail, rms, DynamicSettings(seq_len=20, lr=lr, decay=decay))
        return total / count

    first = [loss_of(lr, decays[0]) for lr in lrs]
    best_lr = lrs[first.index(min(first))]
    expected = [(lr, decays[0]) for lr in lrs] + [(best_lr, d) for d in decays[1:]]
    assert [(s.lr, s.decay) for s, _ in tuning.tried] == expected
    assert [loss for _, loss in tuning.tried] == pytest.approx(first + [loss_of(best_lr, d) for d in decays[1:]])
    winner = min(tuning.tried, key=lambda tried: tried[1])
    assert tuning.chosen == winner[0] and winner[1] < tuning.static - 0.05
    static, count = evaluate(model, tail, batch_size=1, seq_len=20)
    assert tuning.static == pytest.approx(static / count) and tuning.chars == count == len(tail) - 1
    assert [(s, loss) for s, loss, _ in heard] == tuning.tried and {st for _, _, st in heard} == {tuning.static}


def test_tuning_keeps_static_when_no_candidate_beats_it():
    model = tiny_model()
    trained = [p.detach().clone() for p in model.parameters()]
    rms = gradient_rms(model, random_ids(1000, 3), 10)
    tail, scored = random_ids(300, 7), random_ids(300, 8)
    tuning = tune(model, tail, rms, 10, lrs=(3.0, 10.0), decays=(0.0,))  # steps so large they only hurt
    assert tuning.chosen is None and all(loss > tuning.static for _, loss in tuning.tried)
    result = compare(model, scored, random_ids(1000, 3), DynamicSettings(seq_len=10), tail=tail)
    static = evaluate(model, scored, batch_size=1, seq_len=10)
    assert result["static"] == result["dynamic"] == static  # the static figure stands: no reading with updates
    assert result["settings"] is None
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained))


def test_tuning_is_never_worse_than_static_on_the_tail():
    model = tiny_model("gru")
    rms = gradient_rms(model, random_ids(1000, 3), 10)
    for tail in (random_ids(200, 11), torch.cat([random_ids(100, 12), repetitive_ids(4)])):
        tuning = tune(model, tail, rms, 10, lrs=(1e-3, 0.1, 3.0), decays=(0.0,))
        losses = {(s.lr, s.decay): loss for s, loss in tuning.tried}
        kept = tuning.static if tuning.chosen is None else losses[tuning.chosen.lr, tuning.chosen.decay]
        assert kept == min([tuning.static, *losses.values()])


def test_tuning_stops_starting_candidates_at_its_time_bound(monkeypatch):
    import charrnn.scoring.dynamic as dynamic

    model = tiny_model()
    rms = gradient_rms(model, random_ids(1000, 3), 10)
    readings = []
    real = dynamic.dynamic_evaluate
    monkeypatch.setattr(dynamic, "dynamic_evaluate", lambda *args: readings.append(args[3]) or real(*args))
    now = [0.0]
    def clock():  # each look at the clock: 40 s later
        now[0] += 40.0
        return now[0]

    tuning = tune(model, random_ids(200, 9), rms, 10, lrs=(1e-4, 1e-3, 1e-2), decays=(0.0, 1e-2, 0.1), seconds=100,
                  clock=clock)
    # started at 40; the clock read before candidates 2 to 5: 80, 120, 160 (100 s gone), 200
    assert len(readings) == len(tuning.tried) == 3 and tuning.skipped == 2
    assert [s.lr for s, _ in tuning.tried] == [1e-4, 1e-3, 1e-2]


def test_the_tail_is_training_text_before_the_validation_text():
    train_ids = torch.arange(1000)
    assert torch.equal(training_tail(train_ids, {}, 100), torch.arange(899, 1000))
    # the d2l windows: training ids run seq_len (16) characters into the validation text, which starts at 984
    assert torch.equal(training_tail(train_ids, {"windows": [984, 100, 16]}, 100), torch.arange(883, 984))


def test_eval_dynamic_tunes_on_the_training_tail_unless_settings_are_given(cli, trained_run):
    result = json.loads(cli("eval", "--checkpoint", trained_run, "--json", "--dynamic", "--dyn-seq-len", "20")
                        .assert_ok().stdout)
    figures = result["dynamic"]
    tuning = figures["tuning"]
    assert tuning["chars"] > 0 and len(tuning["tried"]) == 5 + 2 - tuning["skipped"]
    if figures["settings"] is None:  # nothing beat static on the tail: the static figure, and no gain
        assert all(t["loss"] >= tuning["static"] for t in tuning["tried"]) and figures["gain"] == 0
    else:
        chosen = next(t for t in tuning["tried"] if (t["lr"], t["decay"]) == (figures["settings"]["lr"],
                                                                               figures["settings"]["decay"]))
        assert chosen["loss"] == min(t["loss"] for t in tuning["tried"]) < tuning["static"]
    for override in (("--dyn-lr", "1e-3"), ("--dyn-decay", "0.01")):
        given = cli("eval", "--checkpoint", trained_run, "--json", "--dynamic", *override).assert_ok()
        assert json.loads(given.stdout)["dynamic"]["tuning"] is None and "tuning" not in given.stderr
    human = cli("eval", "--checkpoint", trained_run, "--dynamic").assert_ok()
    assert "lr 0.0001, decay 0.001:" in human.stderr and "static" in human.stdout


def test_generate_adapt_tunes_on_the_adapt_text(cli, trained_run, tmp_path):
    style = tmp_path / "style.txt"
    style.write_text(make_text(600, seed=9), encoding="utf-8")
    args = ("generate", "--checkpoint", trained_run, "--length", "20", "--seed", "1", "--adapt", style)
    tuned = cli(*args).assert_ok()
    assert f"on the first 599 characters of {style}" in tuned.stderr and len(tuned.stdout) == 20 + 1
    assert "tuning" not in cli(*args, "--dyn-lr", "0.01").assert_ok().stderr
