"""Property-based tests: arbitrary Unicode (lone surrogates too: a Python str can hold
them, a UTF-8 file cannot) and arbitrary bytes thrown at the vocabulary, the reader,
generation, eval and checkpoint loading. Each call works or raises the documented
one-line CharrnnError; nothing else."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import charrnn.corpus.text
from charrnn.storage.checkpoint import load_checkpoint, save_checkpoint
from charrnn.storage.load import load_model
from charrnn.cli.main import app
from charrnn.errors import CharrnnError
from charrnn.model import ModelConfig, build_model
from charrnn.generation.sample import generate
from charrnn.corpus.text import Text, normalize, normalize_pieces, read_text
from charrnn.corpus.vocab import Vocab

torch.set_num_threads(1)
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CHARS = st.one_of(st.characters(), st.characters(categories=["Cs"]))  # lone surrogates included
TEXTS = st.text(CHARS, max_size=60)
VOCAB_TEXT = "the time machine 😀 時間\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained model's checkpoint: enough for generate and eval."""
    vocab = Vocab.from_text(VOCAB_TEXT)
    config = ModelConfig(len(vocab), "gru", hidden=4)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint({"model_config": asdict(config), "vocab": vocab.to_dict(),
                     "model": build_model(config).state_dict()}, path)
    return path


def one_line_or_success(result) -> None:
    """A clean exit; a failure says why in one line (after any warnings)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if result.exit_code:
        *warnings, error = result.stderr.splitlines()
        assert error.startswith("error: ") and all(w.startswith("warning: ") for w in warnings), result.stderr


@SETTINGS
@given(TEXTS)
def test_vocab_round_trips_any_text(text):
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == vocab.dtype and vocab.decode(ids) == text


@SETTINGS
@given(TEXTS, TEXTS)
def test_vocab_encodes_known_characters_and_names_the_others(known, text):
    vocab = Vocab.from_text(known)
    missing = vocab.unknown(text)
    try:
        ids = vocab.encode(text, "the text")
    except CharrnnError as e:
        assert missing and str(e).startswith(f"the text has {len(missing)} distinct character")
        assert f"({sum(c in missing for c in text):,} occurrence" in str(e)
    else:
        assert not missing and vocab.decode(ids) == text
    kept, dropped = vocab.ids_of(Text.from_str(text), unknown="skip")
    assert vocab.decode(kept) == "".join(c for c in text if c not in missing)
    assert dropped == len(text) - len(kept)


@SETTINGS
@given(st.lists(TEXTS, max_size=6))
def test_letters_normalization_is_the_same_piece_by_piece(pieces):
    assert "".join(normalize_pieces(pieces, "letters")) == normalize("".join(pieces), "letters")


@SETTINGS
@given(st.binary(max_size=80), st.integers(1, 9))
def test_reading_in_chunks_is_reading_at_once(tmp_path, monkeypatch, data, chunk):
    """Any bytes: the text, or a one-line error; the same whatever the chunk size."""
    path = tmp_path / "any.txt"
    path.write_bytes(data)

    def read():
        try:
            text = read_text(path)
        except CharrnnError as e:
            assert "\n" not in str(e)
            return None
        return "".join(text.chars[i] for i in text.ids.tolist())

    whole = read()
    monkeypatch.setattr(charrnn.corpus.text, "READ_CHUNK", chunk)
    assert read() == whole
    if whole is not None:
        assert whole == data.decode("utf-8").removeprefix("\ufeff")


@SETTINGS
@given(prefix=TEXTS, temperature=st.floats(allow_nan=True, allow_infinity=True), top_k=st.integers(-2, 40),
       greedy=st.booleans(), samples=st.integers(1, 3), length=st.integers(0, 5))
def test_generate_works_or_says_why(checkpoint, prefix, temperature, top_k, greedy, samples, length):
    model, vocab, _ = load_model(checkpoint, "cpu")
    try:
        steps = list(generate(model, vocab, prefix, length, temperature=temperature, top_k=top_k,
                              greedy=greedy, samples=samples, seed=0))
    except CharrnnError as e:
        assert "\n" not in str(e)
        return
    assert len(steps) == length and all(len(chars) == samples and set(chars) <= set(VOCAB_TEXT) for chars in steps)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=60), TEXTS.map(lambda t: t.encode("utf-8", "surrogatepass"))),
       unknown=st.sampled_from(["error", "skip"]))
def test_eval_on_any_file_works_or_says_why(tmp_path, checkpoint, data, unknown):
    path = tmp_path / "any.txt"
    path.write_bytes(data)
    result = CliRunner().invoke(app, ["eval", str(path), "--checkpoint", str(checkpoint), "--unknown", unknown,
                                      "--json", "--device", "cpu"])
    one_line_or_success(result)


@SETTINGS
@given(st.data())
def test_a_damaged_checkpoint_loads_or_says_why(tmp_path, checkpoint, data):
    """Truncated, or with bytes overwritten anywhere: loading and building the model work
    or raise the one-line error."""
    original = checkpoint.read_bytes()
    damaged = bytearray(original[: data.draw(st.integers(0, len(original)), label="length")])
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "damaged.pt"
    path.write_bytes(bytes(damaged))
    try:
        load_checkpoint(path)
        load_model(path, "cpu")
    except CharrnnError as e:
        assert "\n" not in str(e)
