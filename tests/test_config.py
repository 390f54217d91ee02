"""The settings of a run (charrnn.config): checked as they are made, one line for each
mistake; durations; unknown keys in a preset."""

from __future__ import annotations

import pytest

from charrnn.config import TrainConfig, parse_duration
from charrnn.errors import CharrnnError


def test_durations_in_seconds_minutes_or_hours():
    assert parse_duration("90s") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45
    for bad in ("", "0", "-5s", "10 minutes", "1d"):
        with pytest.raises(CharrnnError):
            parse_duration(bad)


@pytest.mark.parametrize("field,value", [
    ("lr", 0.0), ("lr", -1.0), ("lr", float("nan")), ("lr", float("inf")), ("seq_len", 0), ("hidden", 0),
    ("batch_size", -1), ("layers", 0), ("eval_every", 0), ("clip", 0.0), ("dropout", 1.0), ("max_steps", -1),
    ("cell", "transformer"), ("optimizer", "lbfgs"), ("sampling", "shuffled"), ("device", "tpu"), ("max_time", "soon"),
    ("amp", "fp8"), ("plateau_factor", 1.0), ("plateau_factor", 0.0), ("plateau_patience", 0), ("patience", -1),
    ("lr_schedule", "step"),
])
def test_bad_settings_are_one_line_errors(field, value):
    with pytest.raises(CharrnnError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert "\n" not in message and field.replace("_", "-") in message.replace("_", "-")


def test_an_unknown_setting_in_a_preset_is_named():
    with pytest.raises(CharrnnError, match="unknown setting"):
        TrainConfig.from_dict({"hiden": 8}, "preset.toml")
