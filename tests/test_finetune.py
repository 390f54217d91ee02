"""`train --init-from`: a new run starting from a trained model, its vocabulary grown by
the new text's characters, for every kind of model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from charrnn.storage.load import load_model
from charrnn.config import TrainConfig
from charrnn.model import build_model
from charrnn.training.run import set_up
from charrnn.training.report import Reporter

from conftest import make_text

SIZES = ["--hidden", "12", "--batch-size", "4", "--seq-len", "16", "--eval-every", "5", "--quiet"]
KINDS = {
    "rnn": ["--cell", "rnn", "--init", "book"],
    "gru-stacked": ["--cell", "gru", "--layers", "2"],
    "lstm-embedding": ["--cell", "lstm", "--embedding", "6", "--init", "torch"],
    "lstm-bytes": ["--cell", "lstm", "--vocab", "bytes"],
}
NEW_CHARS = "QZ!?7"  # characters make_text never writes


@pytest.fixture(scope="module")
def bases(tmp_path_factory, cli) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(1500), encoding="utf-8")
    made = {}
    for kind, options in KINDS.items():
        made[kind] = root / kind
        cli("train", corpus, *options, *SIZES, "--max-steps", "4", "--out", made[kind]).assert_ok()
    return made


@pytest.fixture
def new_text(tmp_path) -> Path:
    """A new corpus with characters the bases never saw, in its training and validation parts."""
    path = tmp_path / "new.txt"
    text = make_text(900, seed=5)
    path.write_text(NEW_CHARS + " " + text[:500] + NEW_CHARS + text[500:850] + NEW_CHARS + text[850:], encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_the_run_starts_with_the_trained_weights(kind, bases, new_text, tmp_path):
    """Every weight of the trained model, each old character's rows at its new id; a new
    character's rows as the init scheme starts them (a fresh model of the same seed)."""
    trained, old_vocab, _ = load_model(bases[kind], "cpu")
    config = TrainConfig(corpus=str(new_text), init_from=str(bases[kind]), unknown="extend", out=str(tmp_path / "run"),
                         **cli_model_settings(bases[kind]), batch_size=4, seq_len=16, max_steps=1)
    run = set_up(config, Reporter(), None)
    vocab, model = run.corpus.vocab, run.model
    torch.manual_seed(config.seed)
    fresh = build_model(run.model_config)
    if kind == "lstm-bytes":
        assert len(vocab) == 256
        old_ids = new_ids = list(range(256))
    else:
        assert set(vocab.idx_to_token) == set(old_vocab.idx_to_token) | set(NEW_CHARS)
        old_ids, new_ids = range(len(old_vocab)), [vocab.token_to_idx[t] for t in old_vocab.idx_to_token]
    added = [vocab.token_to_idx[c] for c in NEW_CHARS] if kind != "lstm-bytes" else []
    table = "rnn.E" if "embedding" in kind else "rnn.cells.0.W_xh"
    old, new, start = trained.state_dict(), model.state_dict(), fresh.state_dict()
    for name in new:
        if name == table:
            assert torch.equal(new[name][new_ids], old[name][list(old_ids)])
            assert torch.equal(new[name][added], start[name][added])
        elif name in ("W_hq", "b_q"):
            assert torch.equal(new[name][..., new_ids], old[name][..., list(old_ids)])
            assert torch.equal(new[name][..., added], start[name][..., added])
        else:
            assert torch.equal(new[name], old[name]), name
    if added:  # the new rows are the scheme's: an output bias of zero, input rows that differ from one another
        assert not bool(new["b_q"][added].any()) and not torch.equal(new[table][added[0]], new[table][added[1]])


def cli_model_settings(run: Path) -> dict:
    """The model settings of a base run, as `train` recorded them (what the CLI takes from it)."""
    saved = torch.load(run / "best.pt", weights_only=True)["config"]
    return {k: saved[k] for k in ("cell", "hidden", "layers", "embedding", "init", "init_sigma", "forget_bias", "vocab")}


@pytest.mark.parametrize("kind", KINDS)
def test_fine_tuning_trains_resumes_and_evaluates(kind, bases, new_text, cli, tmp_path):
    out = tmp_path / "tuned"
    result = cli("train", new_text, "--init-from", bases[kind], *SIZES[:-1], "--max-steps", "4", "--out", out,
                 "--dropout", "0.1").assert_ok()
    count = 0 if kind == "lstm-bytes" else len(NEW_CHARS)
    assert f"; {count} character(s) added to its vocabulary" in result.stdout
    if count:
        assert "'Q'" in result.stdout
    saved = torch.load(out / "best.pt", weights_only=True)
    assert saved["config"]["init_from"] == str(bases[kind]) and saved["model_config"]["dropout"] == 0.1
    cli("train", "--resume", out, "--max-steps", "6", "--quiet").assert_ok()
    figures = json.loads(cli("eval", "--checkpoint", out, "--json").assert_ok().stdout)
    assert figures["chars"] > 0
    cli("generate", "--checkpoint", out, "--prefix", "Q", "--length", "10").assert_ok()


def test_new_characters_can_be_refused_or_dropped(bases, new_text, cli, tmp_path):
    cli("train", new_text, "--init-from", bases["rnn"], "--unknown", "error", "--out", tmp_path / "a",
        *SIZES).assert_one_line_error("the training text has 5 distinct characters", "'Q'", "--unknown extend")
    result = cli("train", new_text, "--init-from", bases["rnn"], "--unknown", "skip", "--max-steps", "2",
                 "--out", tmp_path / "b", *SIZES).assert_ok()
    assert "dropped" in result.stderr and "the training text" in result.stderr
    old_vocab = load_model(bases["rnn"], "cpu").vocab
    assert load_model(tmp_path / "b", "cpu").vocab == old_vocab


@pytest.mark.parametrize("option", [["--hidden", "16"], ["--cell", "lstm"], ["--layers", "2"], ["--embedding", "4"],
                                    ["--vocab", "bytes"], ["--init", "orthogonal"]])
def test_the_model_options_come_from_the_checkpoint(option, bases, new_text, cli, tmp_path):
    cli("train", new_text, "--init-from", bases["rnn"], "--out", tmp_path / "x", *SIZES, *option
        ).assert_one_line_error(f"{option[0]} {option[1]} differs from the checkpoint's")


def test_extend_goes_with_init_from(new_text, cli, tmp_path):
    cli("train", new_text, "--unknown", "extend", "--out", tmp_path / "x").assert_one_line_error("--unknown")


def test_a_missing_checkpoint_is_one_line(new_text, cli, tmp_path):
    cli("train", new_text, "--init-from", tmp_path / "nowhere").assert_one_line_error("not found")


def test_the_measurement_script_prints_its_table(bases, new_text, tmp_path):
    """scripts/finetune_compare.py on a tiny base and preset (the real measurement is in its docstring)."""
    import subprocess
    import sys

    preset = tmp_path / "tiny.toml"
    preset.write_text('cell = "gru"\nhidden = 12\nlayers = 2\nbatch_size = 4\nseq_len = 16\neval_every = 5\n'
                      'init = "orthogonal"\nthreads = 1\n')
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, root / "scripts" / "finetune_compare.py", bases["gru-stacked"], new_text,
                             "--config", preset, "--max-time", "2s", "--out", tmp_path / "compare"],
                            capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()
    assert len(rows) == 5 and rows[2].startswith("| unchanged") and rows[3].startswith("| fine-tuned for 2s")
    dropped = [int(row.rsplit("|", 2)[1]) for row in rows[2:]]
    assert dropped[0] > 0 and dropped[1:] == [0, 0]  # the new characters: unknown to the unchanged model only
