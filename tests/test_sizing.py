"""A new --max-time run sizes what it was not told (charrnn.training.sizing): the rule on
paper with a simulated machine, then through the CLI (the start line, options given win,
a preset and a resume keep their settings)."""

from __future__ import annotations

import pytest

from charrnn.config import SIZE_SETTINGS, TrainConfig
from charrnn.errors import CharrnnError
from charrnn.storage.checkpoint import load_checkpoint
from charrnn.training import sizing
from charrnn.training.sizing import CHARS_PER_PARAMETER, dropout_for, size_model


class Machine:
    """Steps whose cost grows with the square of the width; parameters as an LSTM's."""

    def __init__(self, scale: float = 4e9):
        self.scale, self.measured = scale, []

    def __call__(self, config: TrainConfig) -> tuple[float, int]:
        self.measured.append(config.hidden)
        width, inputs = config.hidden, config.embedding or 65
        return self.scale / width ** 2, 4 * width * (width + inputs) + 65 * width


def config(**given) -> TrainConfig:
    return TrainConfig(max_time="5m", auto_size=[name for name in SIZE_SETTINGS if name not in given], **given)


def test_the_rule_keeps_the_widest_width_that_reads_enough_characters_per_parameter():
    machine = Machine()
    choice = size_model(config(), vocab_size=65, train_chars=1_000_000, seconds=300, measure=machine)
    def fits(width):
        speed, parameters = machine(config(hidden=width, embedding=64))
        steps = speed * 300 / (32 * sizing.seq_len_for(width))
        return speed * 300 >= CHARS_PER_PARAMETER * parameters and steps >= sizing.MIN_STEPS

    fits = [w for w in sizing.WIDTHS if fits(w)]
    assert choice.chosen["hidden"] == max(fits) < sizing.WIDTHS[-1]
    # measured from the first width to the first that does not fit, and no further
    first, answer = sizing.WIDTHS.index(sizing.FIRST_WIDTH), sizing.WIDTHS.index(max(fits))
    assert answer > first and sorted(choice.measured) == list(sizing.WIDTHS[first:answer + 2])
    assert choice.chosen["embedding"] == 64 and choice.chosen["layers"] == 1
    assert choice.chosen["lr"] == pytest.approx(sizing.LR_AT_256 * (256 / max(fits)) ** sizing.LR_POWER, rel=0.05)
    assert choice.reason.startswith(f"sized for the text and the budget: LSTM {max(fits)} over a 64-wide embedding")


def test_a_longer_budget_or_a_faster_machine_chooses_a_wider_model():
    widths = [size_model(config(), 65, 1_000_000, seconds, Machine(scale)).chosen["hidden"]
              for seconds, scale in ((60, 4e9), (300, 4e9), (900, 4e9), (300, 2e10))]
    assert widths[0] < widths[1] < widths[2] and widths[1] < widths[3]
    # a slow machine: measured down from the first width to the first that fits
    slow = Machine(2.8e8)
    choice = size_model(config(), 65, 1_000_000, 300, slow)
    answer = sizing.WIDTHS.index(choice.chosen["hidden"])
    assert 0 < answer < sizing.WIDTHS.index(sizing.FIRST_WIDTH)
    assert sorted(choice.measured) == list(sizing.WIDTHS[answer:sizing.WIDTHS.index(sizing.FIRST_WIDTH) + 1])
    # the narrowest width whatever the budget: a run always has a model
    assert size_model(config(), 65, 1_000_000, 0.01, Machine()).chosen["hidden"] == sizing.WIDTHS[0]


def test_a_text_the_budget_does_not_read_once_asks_for_more_characters_per_parameter():
    machine = Machine()
    repeated, fresh = (size_model(config(), 65, chars, 300, machine) for chars in (1_000_000, 500_000_000))
    assert fresh.chosen["hidden"] < repeated.chosen["hidden"]
    speed, parameters = fresh.measured[fresh.chosen["hidden"]]
    assert speed * 300 >= sizing.FRESH_CHARS_PER_PARAMETER * parameters and speed * 300 < 500_000_000
    assert f"the widest to read {sizing.FRESH_CHARS_PER_PARAMETER:g} characters per parameter in 1,000 steps" in fresh.reason


def test_a_width_must_also_get_enough_steps():
    # every width reads plenty per parameter, but past some width too few steps remain
    choice = size_model(config(), 65, 1_000_000, 60, Machine(8.45e9))
    speed, _ = choice.measured[choice.chosen["hidden"]]
    assert speed * 60 / (32 * choice.chosen["seq_len"]) >= sizing.MIN_STEPS
    wider = sizing.WIDTHS[sizing.WIDTHS.index(choice.chosen["hidden"]) + 1]
    speed, parameters = choice.measured[wider]
    assert speed * 60 >= CHARS_PER_PARAMETER * parameters and speed * 60 / (32 * sizing.seq_len_for(wider)) < sizing.MIN_STEPS


def test_dropout_follows_the_passes_over_the_text():
    assert [dropout_for(p) for p in (0.5, 2, 4, 8, 16, 1000)] == [0.0, 0.0, 0.1, 0.2, 0.3, sizing.MAX_DROPOUT]
    short, long = (size_model(config(), 65, chars, 300, Machine()).chosen["dropout"] for chars in (20_000_000, 100_000))
    assert short < long


def test_a_text_the_budget_would_read_more_than_max_passes_times_is_read_that_often():
    chars = 200_000
    choice = size_model(config(), 65, chars, 3600, Machine())
    width = choice.chosen["hidden"]
    assert choice.chosen["epochs"] == sizing.MAX_PASSES and choice.chosen["dropout"] == dropout_for(sizing.MAX_PASSES)
    assert f"{sizing.MAX_PASSES} passes over the text, the most that pay: --epochs {sizing.MAX_PASSES}" in choice.reason

    def fits(width):  # with what MAX_PASSES passes read, not what the hour would
        speed, parameters = choice.measured[width]
        reads = sizing.MAX_PASSES * chars
        assert speed * 3600 > reads
        return reads >= CHARS_PER_PARAMETER * parameters and reads / (32 * sizing.seq_len_for(width)) >= sizing.MIN_STEPS

    assert fits(width) and not fits(sizing.WIDTHS[sizing.WIDTHS.index(width) + 1])
    assert size_model(config(), 65, chars, 7200, Machine()).chosen == choice.chosen  # the cap, not the hour
    # a budget that reads the text fewer times sets no cap
    assert size_model(config(), 65, chars, 60, Machine()).chosen["epochs"] == 0


def test_epochs_given_cap_the_passes_the_rule_counts():
    given = size_model(config(epochs=5.0), 65, 200_000, 3600, Machine())
    assert "epochs" not in given.chosen and given.chosen["dropout"] == dropout_for(5)
    assert "the most that pay" not in given.reason


def test_options_given_win_and_a_given_width_is_measured_alone():
    machine = Machine()
    choice = size_model(config(hidden=200, lr=0.01), 65, 1_000_000, 300, machine)
    assert machine.measured == [200] and "hidden" not in choice.chosen and "lr" not in choice.chosen
    assert set(choice.chosen) == set(SIZE_SETTINGS) - {"hidden", "lr"}
    assert "the width given" in choice.reason
    # a vocabulary no larger than the embedding stays one-hot
    assert size_model(config(), 28, 1_000_000, 300, Machine()).chosen["embedding"] == 0


def test_auto_size_names_size_settings_of_a_timed_run():
    with pytest.raises(CharrnnError, match="auto_size"):
        TrainConfig(auto_size=["hidden"])  # no --max-time
    with pytest.raises(CharrnnError, match="auto_size"):
        TrainConfig(max_time="1m", auto_size=["cell"])


# ---------------------------------------------------------------- through the CLI


def test_a_timed_run_without_sizes_chooses_them_says_why_and_a_resume_keeps_them(cli, corpus_file, tmp_path):
    out = tmp_path / "run"
    trained = cli("train", corpus_file, "--max-time", "60s", "--eval-every", "1000", "--out", out).assert_ok()
    ckpt = load_checkpoint(out / "last.pt")
    chosen, config = ckpt["sizing"]["chosen"], ckpt["config"]
    assert set(chosen) == set(SIZE_SETTINGS) and config["auto_size"] == []
    assert {name: config[name] for name in chosen} == chosen
    assert f"sized for the text and the budget: LSTM {chosen['hidden']}" in trained.stdout
    assert trained.stdout.index("training a ") < trained.stdout.index("sized for")  # right after the start line
    # a text this small is read MAX_PASSES times, well before the budget's end
    assert chosen["epochs"] == sizing.MAX_PASSES and ckpt["progress"]["step"] == config["epochs"]  # one batch a pass
    assert ckpt["progress"]["elapsed"] < 60
    refused = cli("train", "--resume", out, "--max-time", "+5s")
    assert refused.exit_code == 2 and f"all that --epochs {sizing.MAX_PASSES:g} (30 steps) allows" in refused.stderr
    resumed = cli("train", "--resume", out, "--max-time", "+5s", "--max-steps", "+1", "--epochs", "0").assert_ok()
    assert "sized for" not in resumed.stdout
    after = load_checkpoint(out / "last.pt")
    assert after["progress"]["step"] == 31 and after["sizing"] == ckpt["sizing"]
    assert {name: after["config"][name] for name in chosen if name != "epochs"} == {
        name: value for name, value in chosen.items() if name != "epochs"}


def test_given_options_win_and_a_preset_or_a_run_without_a_budget_is_not_sized(cli, corpus_file, tmp_path):
    cli("train", corpus_file, "--max-time", "2s", "--hidden", "16", "--seq-len", "16", "--eval-every", "1000",
        "--out", tmp_path / "given").assert_ok()
    ckpt = load_checkpoint(tmp_path / "given" / "last.pt")
    assert ckpt["config"]["hidden"] == 16 and ckpt["config"]["seq_len"] == 16
    assert set(ckpt["sizing"]["chosen"]) == set(SIZE_SETTINGS) - {"hidden", "seq_len"}
    preset = tmp_path / "preset.toml"
    preset.write_text('max_time = "2s"\nbatch_size = 4\neval_every = 1000\n')
    cli("train", corpus_file, "--config", preset, "--out", tmp_path / "preset").assert_ok()
    ckpt = load_checkpoint(tmp_path / "preset" / "last.pt")
    assert ckpt["sizing"] is None and ckpt["config"]["hidden"] == TrainConfig.hidden
    cli("train", corpus_file, "--max-steps", "2", "--batch-size", "4", "--out", tmp_path / "steps").assert_ok()
    assert load_checkpoint(tmp_path / "steps" / "last.pt")["sizing"] is None
