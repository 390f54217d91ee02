"""Byte-level models (`train --vocab bytes`) through the CLI: any file trains, any prefix
and eval text is accepted, output is decoded incrementally (U+FFFD for invalid bytes, the
bytes themselves with --raw), and eval reports bits per byte and per character."""

from __future__ import annotations

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from charrnn.corpus.byte_vocab import decoded_steps, shown
from charrnn.storage.checkpoint import load_checkpoint
from charrnn.cli.main import app

from conftest import TINY, make_text

# UTF-8 text with a stretch that is not UTF-8 (a lone 0xff, a cut-off euro sign) and a NUL
MIXED = b"caf\xc3\xa9 \xe2\x82\xac \xff\xfe \xe2\x82 \x00 "


@pytest.fixture(scope="module")
def byte_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "mixed.bin"
    text = make_text(3000).encode()
    path.write_bytes(text[:1000] + MIXED * 5 + text[1000:])
    return path


@pytest.fixture(scope="module")
def byte_run(byte_corpus, cli):
    run = byte_corpus.parent / "run"
    cli("train", byte_corpus, "--vocab", "bytes", "--max-steps", "4", "--out", run, *TINY).assert_ok()
    return run


def test_a_file_that_is_not_utf8_trains_as_bytes_only(cli, byte_corpus, byte_run, tmp_path):
    cli("train", byte_corpus, "--max-steps", "1", "--out", tmp_path / "chars", *TINY) \
        .assert_one_line_error("not UTF-8", str(byte_corpus))
    ckpt = load_checkpoint(byte_run / "last.pt")
    assert ckpt["vocab"] == {"kind": "bytes"} and ckpt["model_config"]["vocab_size"] == 256
    assert ckpt["corpus"]["vocab"] == "bytes" and ckpt["config"]["vocab"] == "bytes"
    info = json.loads(cli("info", byte_run, "--json").assert_ok().stdout)
    assert info["vocabulary"]["kind"] == "bytes" and info["vocabulary"]["size"] == 256
    assert "256 byte values" in cli("info", byte_run).assert_ok().stdout
    # resume finds and checks the same bytes
    cli("train", "--resume", byte_run, "--max-steps", "5", "-q").assert_ok()
    assert load_checkpoint(byte_run / "last.pt")["progress"]["step"] == 5


def test_generate_decodes_bytes_and_raw_writes_them(cli, byte_run, tmp_path):
    args = ("generate", "--checkpoint", byte_run, "--prefix", "Ωmega € ", "--length", "300", "--seed", "2")
    result = cli(*args).assert_ok()
    raw = CliRunner().invoke(app, [str(a) for a in (*args, "--raw")])
    assert raw.exit_code == 0, raw.output
    # the briefly trained model emits invalid UTF-8: shown as U+FFFD, one per invalid byte
    assert "\ufffd" in result.stdout
    written = tmp_path / "out.bin"
    cli(*args, "--raw", "--output", written).assert_ok()
    data = written.read_bytes()
    assert data.startswith("Ωmega € ".encode()) and data.endswith(b"\n")
    assert shown(data.decode("utf-8", "surrogateescape")) == result.stdout
    assert raw.stdout_bytes == data
    cli(*args, "--raw", "--json").assert_one_line_error("--raw")


def test_streamed_bytes_never_split_a_character():
    steps = [[bytes([b])] for b in "aé€".encode() + b"\xff" + "ü".encode()[:1]]
    assert list(decoded_steps(steps, 1)) == [["a"], [""], ["é"], [""], [""], ["€"], ["\udcff"], [""], ["\udcc3"]]


def test_eval_reports_bits_per_byte_and_per_character(cli, byte_run, byte_corpus, tmp_path):
    utf8 = tmp_path / "utf8.txt"
    utf8.write_text("Путешественник во времени — the time traveller\n" * 3, encoding="utf-8")
    result = json.loads(cli("eval", utf8, "--checkpoint", byte_run, "--json").assert_ok().stdout)
    size, chars = len(utf8.read_bytes()), len(utf8.read_text(encoding="utf-8"))
    assert result["chars"] == chars and result["bytes"] == size - 1
    assert result["bits_per_char"] == pytest.approx(result["bits_per_byte"] * size / chars)
    assert result["bits_per_char"] > result["bits_per_byte"]  # Cyrillic takes two bytes a letter
    invalid = json.loads(cli("eval", byte_corpus, "--checkpoint", byte_run, "--json").assert_ok().stdout)
    assert invalid["bits_per_char"] is None and invalid["chars"] is None
    line = cli("eval", byte_corpus, "--checkpoint", byte_run).assert_ok().stdout
    assert "bits/byte | not UTF-8 |" in line
    shaded = cli("eval", byte_corpus, "--checkpoint", byte_run, "--show", "--show-chars", "1200").assert_ok().stdout
    assert "\ufffd" in shaded and "on the first 1,200 bytes of" in shaded


def test_character_options_do_not_go_with_bytes(cli, byte_corpus, tmp_path):
    cli("train", byte_corpus, "--vocab", "bytes", "--normalize", "letters", *TINY) \
        .assert_one_line_error("--normalize letters", "--vocab bytes")
    cli("train", byte_corpus, "--vocab", "words", *TINY).assert_one_line_error("--vocab", "words")


# a text whose characters take one to four bytes, and a quotation to track
UNICODE_TEXT = 'the "café" costs 3 € (or 4 ¥) — 𝄞 Ωmega\n' * 8


def test_neurons_on_a_byte_model_line_activations_up_with_characters(cli, byte_run, tmp_path):
    """Activations come per byte, the text's properties per character: each character takes
    the units' values after its last byte, where the model has read all of it."""
    from charrnn.corpus.byte_vocab import per_character
    from charrnn.storage.load import load_model
    from charrnn.inspection.neurons import best_units, record, text_properties

    text_file = tmp_path / "unicode.txt"
    text_file.write_text(UNICODE_TEXT, encoding="utf-8")
    found = json.loads(cli("neurons", text_file, "--checkpoint", byte_run, "--json").assert_ok().stdout)
    size = len(UNICODE_TEXT.encode())
    assert found["bytes"] == size and found["chars"] == len(UNICODE_TEXT) < size
    model, vocab, _ = load_model(byte_run, "cpu")
    activations, units = record(model, vocab.encode(UNICODE_TEXT))
    per_char = per_character(activations, UNICODE_TEXT)
    ends = [len(UNICODE_TEXT[: i + 1].encode()) - 1 for i in range(len(UNICODE_TEXT))]
    assert torch.equal(per_char, activations[ends])
    assert found["properties"] == best_units(per_char, units, text_properties(UNICODE_TEXT), 3)
    assert "bytes (" in cli("neurons", text_file, "--checkpoint", byte_run).assert_ok().stdout
    # --max-chars cuts inside a character: its bytes are then characters of their own (U+DCxx)
    cli("neurons", text_file, "--checkpoint", byte_run, "--max-chars", 15).assert_ok()


def test_eval_shows_a_byte_model_s_unit_per_character(cli, byte_run, tmp_path):
    from charrnn.corpus.byte_vocab import per_character
    from charrnn.storage.load import load_model
    from charrnn.inspection.neurons import parse_unit, unit_activations

    text_file, page = tmp_path / "unicode.txt", tmp_path / "unit.html"
    text_file.write_text(UNICODE_TEXT, encoding="utf-8")
    cli("eval", text_file, "--checkpoint", byte_run, "--show-html", page, "--neuron", "1:2").assert_ok()
    model, vocab, _ = load_model(byte_run, "cpu")
    values = per_character(unit_activations(model, vocab.encode(UNICODE_TEXT), parse_unit("1:2", model)), UNICODE_TEXT)
    titles = re.findall(r'<span class="a\d+" title="([^"]+)">', page.read_text(encoding="utf-8"))
    assert titles == [f"{v:+.3f}" for v in values] and len(titles) == len(UNICODE_TEXT)


def test_serve_shades_a_byte_model_s_text_per_character(byte_run):
    pytest.importorskip("starlette", reason="charrnn serve needs the serve extra")
    from starlette.testclient import TestClient

    from charrnn.corpus.byte_vocab import char_bits, per_character
    from charrnn.storage.load import load_model
    from charrnn.inspection.neurons import parse_unit, unit_activations
    from charrnn.serve import create_app
    from charrnn.inspection.surprisal import surprisal

    model, vocab, ckpt = load_model(byte_run, "cpu")
    client = TestClient(create_app(model, vocab, ckpt, "bytes"))
    byte_bits = surprisal(model, vocab, UNICODE_TEXT)
    result = client.post("/api/eval", json={"text": UNICODE_TEXT}).json()
    assert result["chars"] == len(UNICODE_TEXT) and result["bytes"] == len(UNICODE_TEXT.encode())
    assert result["surprisal"] == pytest.approx(char_bits(UNICODE_TEXT, byte_bits), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(sum(byte_bits) / len(byte_bits), rel=1e-5)
    assert len(result["colours"]) == len(result["tooltips"]) == len(UNICODE_TEXT)
    by_unit = client.post("/api/eval", json={"text": UNICODE_TEXT, "neuron": "1:2"}).json()
    values = unit_activations(model, vocab.encode(UNICODE_TEXT), parse_unit("1:2", model))
    assert by_unit["activations"] == pytest.approx(per_character(values, UNICODE_TEXT), abs=1e-6)
    assert len(by_unit["colours"]) == len(UNICODE_TEXT)
