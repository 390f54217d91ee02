"""The command line end to end (typer's CliRunner on charrnn.cli.main.app): train, generate,
eval, run directories, presets, datasets, and one-line errors for every bad input."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import charrnn.training.run_dir
from charrnn.storage.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint
from charrnn.storage.load import load_model
from charrnn.config import TrainConfig
from charrnn.corpus.data import load_corpus
from charrnn.corpus.datasets import DATASETS
from charrnn.scoring.evaluation import evaluate
from charrnn.generation.sample import generate

from conftest import TINY, make_text

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "The time "
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


def gen(cli, run, *args):
    return cli("generate", "--checkpoint", run, *args).assert_ok().stdout


def split_samples(stdout: str) -> list[str]:
    parts = re.split(r"--- sample (\d+) ---\n", stdout)
    assert parts[0] == ""
    numbers, bodies = parts[1::2], parts[2::2]
    assert numbers == [str(i) for i in range(1, len(numbers) + 1)]
    assert all(body.endswith("\n") for body in bodies)
    return [body[:-1] for body in bodies]


# ---------------------------------------------------------------- train


def test_train_writes_a_complete_run_directory(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"best.pt", "last.pt", "config.toml"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    with open(trained_run / "config.toml", "rb") as f:
        settings = tomllib.load(f)
    assert settings["hidden"] == 16 and settings["batch_size"] == 4 and settings["seq_len"] == 16
    assert settings["max_steps"] == 6 and settings["cell"] == "lstm"
    assert settings["out"] == str(trained_run)
    TrainConfig.from_dict(settings)  # usable again as a preset
    ckpt = load_checkpoint(trained_run / "last.pt")
    assert ckpt["progress"]["step"] == 6
    assert ckpt["model_config"]["hidden"] == 16


def test_train_prints_a_summary(cli, corpus_file, tmp_path):
    result = cli("train", corpus_file, "--max-steps", "2", "--out", tmp_path / "run", *TINY).assert_ok()
    assert "done: 2 steps" in result.stdout
    assert str(tmp_path / "run") in result.stdout


def test_latest_points_to_the_newest_run(cli, corpus_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = []
    for _ in range(2):
        out = cli("train", corpus_file, "--max-steps", "1", *TINY).assert_ok().stdout
        runs.append(re.search(r"checkpoints in (\S+)", out).group(1))
    assert runs[0] != runs[1]
    for run in runs:
        assert Path(run).parent == Path("runs")
        assert {"best.pt", "last.pt", "config.toml"} <= {p.name for p in Path(run).iterdir()}
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink()
    assert latest.resolve() == (tmp_path / runs[1]).resolve()
    # generate and eval without --checkpoint use runs/latest
    assert cli("generate", "--length", "5", "--seed", "0").assert_ok().stdout == \
        cli("generate", "--checkpoint", runs[1], "--length", "5", "--seed", "0").assert_ok().stdout
    assert cli("eval", "--json").assert_ok().stdout == \
        cli("eval", "--checkpoint", runs[1], "--json").assert_ok().stdout


def test_runs_started_in_the_same_second_get_their_own_directories(cli, corpus_file, tmp_path, monkeypatch):
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2030, 1, 2, 3, 4, 5)

    monkeypatch.setattr(charrnn.training.run_dir, "datetime", FrozenClock)
    monkeypatch.chdir(tmp_path)
    for _ in range(3):
        cli("train", corpus_file, "--max-steps", "1", *TINY).assert_ok()
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.name != "latest")
    assert len(runs) == 3, runs


def test_out_does_not_clobber_a_users_file_named_latest(cli, corpus_file, tmp_path):
    (tmp_path / "latest").write_text("my notes\n")
    cli("train", corpus_file, "--max-steps", "1", "--out", tmp_path / "run", *TINY).assert_ok()
    assert not (tmp_path / "latest").is_symlink()
    assert (tmp_path / "latest").read_text() == "my notes\n"


def test_preset_with_command_line_overrides(cli, corpus_file, tmp_path):
    preset = tmp_path / "preset.toml"
    preset.write_text('cell = "gru"\nhidden = 8\nlayers = 2\nbatch_size = 4\nseq_len = 16\n'
                      'max_steps = 2\neval_every = 5\nlr = 0.01\n')
    cli("train", corpus_file, "--config", preset, "--hidden", "16", "--max-steps", "3",
        "--out", tmp_path / "run", "-q").assert_ok()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model_config"]["cell"] == "gru"  # from the preset
    assert ckpt["model_config"]["layers"] == 2
    assert ckpt["model_config"]["hidden"] == 16  # the command line wins
    assert ckpt["config"]["lr"] == 0.01
    assert ckpt["progress"]["step"] == 3
    # the run's config.toml is itself a preset that gives the same model
    cli("train", corpus_file, "--config", tmp_path / "run" / "config.toml", "--max-steps", "1",
        "--out", tmp_path / "again", "-q").assert_ok()
    again = load_checkpoint(tmp_path / "again" / "last.pt")
    assert again["model_config"] == ckpt["model_config"]
    assert {k: v for k, v in again["config"].items() if k not in ("out", "max_steps")} == \
        {k: v for k, v in ckpt["config"].items() if k not in ("out", "max_steps")}


def test_resume_continues_a_run(cli, corpus_file, tmp_path):
    run = tmp_path / "run"
    cli("train", corpus_file, "--max-steps", "2", "--out", run, *TINY).assert_ok()
    cli("train", "--resume", run, "--max-steps", "4", "-q").assert_ok()
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == 4
    cli("train", "--resume", run, "--hidden", "32").assert_one_line_error("--hidden", "resuming")


def test_resume_through_runs_latest(cli, corpus_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli("train", corpus_file, "--max-steps", "2", *TINY).assert_ok()
    resumed = cli("train", "--resume", "runs/latest", "--max-steps", "4", "--eval-every", "5").assert_ok()
    # the start line says it goes on, from where, and names the run as the user did
    start = resumed.stdout.splitlines()[0]
    assert start.startswith("resuming runs/latest at step 2 of 4 steps (+2 on the run's 2): a 1-layer LSTM (16 hidden, ")
    assert "training a" not in start and str(tmp_path) not in start
    assert (tmp_path / "runs" / "latest").resolve().is_dir()
    assert load_checkpoint(tmp_path / "runs" / "latest" / "last.pt")["progress"]["step"] == 4


# ---------------------------------------------------------------- generate


def test_generate_echoes_the_prefix_then_length_characters(cli, trained_run):
    out = gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--seed", "1")
    assert out.startswith(PREFIX) and out.endswith("\n")
    body = out[len(PREFIX):-1]
    assert len(body) == 20
    model, vocab, _ = load_model(trained_run, "cpu")
    assert set(body) <= set(vocab.idx_to_token)
    # the same continuation as the library's generate with the same seed
    assert body == "".join(c[0] for c in generate(model, vocab, PREFIX, 20, seed=1))


def test_generate_same_seed_same_text(cli, trained_run):
    args = ("--prefix", PREFIX, "--length", "20")
    first = gen(cli, trained_run, *args, "--seed", "1")
    assert gen(cli, trained_run, *args, "--seed", "1") == first
    others = {gen(cli, trained_run, *args, "--seed", str(seed)) for seed in (2, 3, 4)}
    assert others != {first}


def test_greedy_is_deterministic(cli, trained_run):
    greedy = gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--greedy")
    assert gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--greedy") == greedy
    assert gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--temperature", "0") == greedy
    assert gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--top-k", "1", "--seed", "7") == greedy
    model, vocab, _ = load_model(trained_run, "cpu")
    text = PREFIX
    with torch.no_grad():  # the book's predict: argmax of the last logits of the whole text
        for _ in range(20):
            logits, _ = model(vocab.encode(text).long()[None])
            text += vocab.idx_to_token[logits[0, -1].argmax().item()]
    assert greedy == text + "\n"


def test_generate_several_samples(cli, trained_run):
    out = gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--samples", "3", "--seed", "1")
    samples = split_samples(out)
    assert len(samples) == 3
    assert all(s.startswith(PREFIX) and len(s) == len(PREFIX) + 20 for s in samples)
    assert len(set(samples)) > 1
    assert gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--samples", "3", "--seed", "1") == out
    greedy = split_samples(gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--samples", "3", "--greedy"))
    assert len(set(greedy)) == 1
    assert greedy[0] + "\n" == gen(cli, trained_run, "--prefix", PREFIX, "--length", "20", "--greedy")


def test_generate_without_prefix_and_zero_length(cli, trained_run):
    out = gen(cli, trained_run, "--length", "7", "--seed", "3")
    assert len(out) == 8 and out.endswith("\n")
    assert gen(cli, trained_run, "--prefix", PREFIX, "--length", "0") == PREFIX + "\n"


# ---------------------------------------------------------------- eval


def check_metrics(result: dict):
    assert {"perplexity", "bits_per_char", "loss", "chars"} <= result.keys()
    assert result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2), rel=1e-12)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
    assert result["chars"] > 0 and 0 < result["loss"] < 10


def test_eval_on_the_validation_split(cli, trained_run):
    result = json.loads(cli("eval", "--checkpoint", trained_run, "--json").assert_ok().stdout)
    check_metrics(result)
    ckpt = load_checkpoint(trained_run / "best.pt")
    corpus = load_corpus(ckpt["corpus"]["path"])
    assert len(corpus.val_ids) == 300
    assert result["chars"] == len(corpus.val_ids) - 1  # one stream: every character predicted
    model, vocab, _ = load_model(trained_run, "cpu")
    ids = corpus.val_ids.long()
    with torch.no_grad():
        logits, _ = model(ids[None, :-1])
    expected = torch.nn.functional.cross_entropy(logits[0], ids[1:]).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-6)


def test_a_model_with_an_embedding_trains_resumes_evaluates_and_generates(cli, corpus_file, tmp_path):
    run = tmp_path / "run"
    cli("train", corpus_file, "--embedding", "4", "--max-steps", "2", "--eval-every", "2", "--out", run,
        *TINY).assert_ok()
    cli("train", "--resume", run, "--max-steps", "4", "-q").assert_ok()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["model_config"]["embedding"] == 4 and ckpt["model"]["rnn.E"].shape[1] == 4
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    result = json.loads(cli("eval", "--checkpoint", run / "last.pt", "--json").assert_ok().stdout)
    assert result["loss"] == pytest.approx(logged["val_loss"], rel=1e-6)
    assert len(cli("generate", "--checkpoint", run, "--length", "20", "--seed", "1").assert_ok().stdout) > 20
    cli("train", corpus_file, "--embedding", "-1", *TINY).assert_one_line_error("--embedding", "negative")


def test_eval_on_a_file(cli, trained_run, tmp_path):
    text = make_text(900, seed=11)
    (tmp_path / "other.txt").write_text(text)
    result = json.loads(cli("eval", tmp_path / "other.txt", "--checkpoint", trained_run, "--json").assert_ok().stdout)
    check_metrics(result)
    model, vocab, _ = load_model(trained_run, "cpu")
    total, count = evaluate(model, vocab.encode(text), batch_size=4, seq_len=16)  # the layout training used
    assert result["chars"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-9)
    # one stream: every character after the first is predicted
    one = json.loads(cli("eval", tmp_path / "other.txt", "--checkpoint", trained_run, "--json",
                         "--batch-size", "1").assert_ok().stdout)
    assert one["chars"] == len(text) - 1
    human = cli("eval", tmp_path / "other.txt", "--checkpoint", trained_run).assert_ok().stdout
    assert "perplexity" in human and "bits/char" in human


def test_val_file_is_the_validation_split(cli, corpus_file, tmp_path):
    val = make_text(500, seed=9)
    write(tmp_path / "val.txt", val)
    cli("train", corpus_file, "--val-file", tmp_path / "val.txt", "--max-steps", "1", "--out", tmp_path / "run",
        *TINY).assert_ok()
    corpus = load_checkpoint(tmp_path / "run" / "last.pt")["corpus"]
    assert corpus["val_file"]["path"] == str((tmp_path / "val.txt").resolve())
    split = json.loads(cli("eval", "--checkpoint", tmp_path / "run", "--json", "--batch-size", "1").assert_ok().stdout)
    on_file = json.loads(cli("eval", tmp_path / "val.txt", "--checkpoint", tmp_path / "run", "--json",
                             "--batch-size", "1").assert_ok().stdout)
    assert split["chars"] == len(val) - 1
    assert split["loss"] == on_file["loss"]


def test_normalize_letters_applies_to_eval_files(cli, corpus_file, tmp_path):
    cli("train", corpus_file, "--normalize", "letters", "--max-steps", "1", "--out", tmp_path / "run",
        *TINY).assert_ok()
    vocab = load_model(tmp_path / "run", "cpu").vocab
    assert set(vocab.idx_to_token) <= set("abcdefghijklmnopqrstuvwxyz ") | {"<unk>"}
    write(tmp_path / "shouty.txt", "THE TIME-TRAVELLER, 1895!!  Quite so.")
    result = json.loads(cli("eval", tmp_path / "shouty.txt", "--checkpoint", tmp_path / "run", "--json",
                            "--batch-size", "1").assert_ok().stdout)
    assert result["chars"] == len("the time traveller quite so ") - 1
    # a prefix is normalised the same way before it reaches the model
    out = gen(cli, tmp_path / "run", "--prefix", "The Time-Traveller", "--length", "3", "--seed", "0")
    assert out.startswith("the time traveller") and len(out) == len("the time traveller") + 3 + 1


@pytest.mark.parametrize("preset", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_presets_are_valid_settings(preset):
    from charrnn.config import read_preset
    from charrnn.model import build_model, num_parameters

    config = TrainConfig.from_dict(read_preset(preset), str(preset))
    model = build_model(config.model_config(28))
    assert len(model.rnn.cells) == config.layers and model.W_hq.shape == (config.hidden, 28) and num_parameters(model)
    if preset.name.startswith("d2l-"):  # the book's runs keep the book's start
        assert (config.init, config.init_sigma, config.optimizer, config.lr_schedule) == ("book", 0.01, "sgd", "constant")


# ---------------------------------------------------------------- datasets


def test_train_on_a_dataset_then_eval_from_the_cache(cli, shared_data_server, tmp_path, monkeypatch):
    run = tmp_path / "run"
    cli("train", "--dataset", "timemachine", "--cell", "rnn", "--max-steps", "2", "--out", run, *TINY).assert_ok()
    source = load_checkpoint(run / "last.pt")["corpus"]
    assert source["kind"] == "dataset" and source["name"] == "timemachine"
    assert source["sha256"] == DATASETS["timemachine"].sha256
    assert shared_data_server.requests == ["/timemachine.txt"]
    assert (tmp_path / "cache" / "timemachine.txt").is_file()

    shared_data_server.close()  # from now on only the cache can serve the text
    monkeypatch.setenv("CHARRNN_DATA_URL", shared_data_server.url)
    result = json.loads(cli("eval", "--checkpoint", run, "--json").assert_ok().stdout)
    check_metrics(result)
    assert result["text"] == "the validation split"
    corpus = load_corpus(dataset="timemachine", quiet=True)
    model, vocab, _ = load_model(run, "cpu")
    total, count = evaluate(model, corpus.val_ids, batch_size=4, seq_len=16)  # the layout training used
    assert result["chars"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-9)


# ---------------------------------------------------------------- bad input: one line, no traceback


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch):
    """Run in an empty directory; the test then checks no run directory was left behind."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    assert not (work / "runs").exists(), "a failed train left a run directory behind"


def write(path: Path, data) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


@pytest.mark.parametrize("name,data,fragments", [
    ("missing", None, ["not found"]),
    ("directory", "DIR", ["folder", "has no files"]),  # a folder is a corpus of its files: here, none
    ("empty", b"", ["empty"]),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["not UTF-8", "offset 0"]),
    ("latin1", "caf\xe9 au lait".encode("latin-1"), ["not UTF-8", "offset 3"]),
    ("nul", b"abc\x00def" * 100, ["NUL byte", "offset 3"]),
])
def test_train_bad_corpus(cli, in_empty_dir, tmp_path, name, data, fragments):
    path = tmp_path / name
    if data == "DIR":
        path.mkdir()
    elif data is not None:
        write(path, data)
    cli("train", path, "--max-steps", "1", *TINY).assert_one_line_error(*fragments)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_train_corpus_shorter_than_one_sequence(cli, in_empty_dir, tmp_path, sampling):
    write(tmp_path / "short.txt", "abcdefghij" * 3)
    cli("train", tmp_path / "short.txt", "--seq-len", "64", "--batch-size", "1", "--max-steps", "1",
        "--sampling", sampling).assert_one_line_error("--seq-len 64")


@pytest.mark.parametrize("option,value,fragment", [
    ("--lr", "0", "--lr"), ("--lr", "-0.1", "--lr"), ("--lr", "nan", "--lr"),
    ("--seq-len", "0", "--seq-len"), ("--batch-size", "0", "--batch-size"), ("--hidden", "0", "--hidden"),
    ("--layers", "0", "--layers"), ("--dropout", "1", "--dropout"), ("--clip", "0", "--clip"),
    ("--cell", "transformer", "--cell"), ("--optimizer", "lbfgs", "--optimizer"),
    ("--max-time", "soon", "--max-time"), ("--epochs", "-1", "--epochs"), ("--eval-every", "0", "--eval-every"),
    ("--val-fraction", "1", "--val-fraction"), ("--sampling", "shuffled", "--sampling"),
    ("--normalize", "lower", "--normalize"), ("--device", "tpu", "--device"),
])
def test_train_bad_settings(cli, in_empty_dir, corpus_file, option, value, fragment):
    cli("train", corpus_file, "--max-steps", "1", *TINY, option, value).assert_one_line_error(fragment)


def test_train_bad_preset(cli, in_empty_dir, corpus_file, tmp_path):
    write(tmp_path / "typo.toml", "hiden = 8\n")
    cli("train", corpus_file, "--config", tmp_path / "typo.toml").assert_one_line_error("unknown setting", "hiden")
    write(tmp_path / "broken.toml", "hidden = = 8\n")
    cli("train", corpus_file, "--config", tmp_path / "broken.toml").assert_one_line_error("not valid TOML")
    cli("train", corpus_file, "--config", tmp_path / "none.toml").assert_one_line_error("not found")


@NO_CUDA
def test_train_device_cuda_without_cuda(cli, in_empty_dir, corpus_file):
    cli("train", corpus_file, "--max-steps", "1", *TINY, "--device", "cuda").assert_one_line_error("CUDA")


@NO_CUDA
@pytest.mark.parametrize("command", ["generate", "eval"])
def test_device_cuda_without_cuda(cli, trained_run, command):
    cli(command, "--checkpoint", trained_run, "--device", "cuda").assert_one_line_error("CUDA")


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_an_unknown_device_is_one_line(cli, trained_run, command):
    cli(command, "--checkpoint", trained_run, "--device", "tpu").assert_one_line_error("--device", "tpu")


@pytest.mark.parametrize("option,value,fragment", [
    ("--length", "-1", "--length"), ("--temperature", "-1", "--temperature"),
    ("--top-k", "-1", "--top-k"), ("--samples", "0", "--samples"),
])
def test_generate_bad_settings(cli, trained_run, option, value, fragment):
    cli("generate", "--checkpoint", trained_run, "--prefix", PREFIX, option, value).assert_one_line_error(fragment)


def test_prefix_outside_the_vocabulary(cli, trained_run):
    line = cli("generate", "--checkpoint", trained_run, "--prefix", "Ωmega €5", "--length", "5") \
        .assert_one_line_error(code=2)
    assert "'Ω'" in line and "'€'" in line and "'5'" in line
    assert "prefix" in line


@pytest.mark.parametrize("args", [["--prefix", "Ωmega"], ["--prefix", PREFIX, "--length", "-1"],
                                  ["--prefix", PREFIX, "--temperature", "-1"]], ids=["prefix", "length", "temperature"])
def test_generate_errors_print_nothing_on_stdout(cli, trained_run, args):
    result = cli("generate", "--checkpoint", trained_run, *args)
    result.assert_one_line_error()
    assert result.stdout == ""


def test_eval_file_outside_the_vocabulary(cli, trained_run, tmp_path):
    write(tmp_path / "ru.txt", "the time traveller — Путешественник во времени\n")
    line = cli("eval", tmp_path / "ru.txt", "--checkpoint", trained_run).assert_one_line_error(str(tmp_path / "ru.txt"))
    assert "'П'" in line and "'—'" in line and "vocabulary" in line
    # distinct characters and occurrences, each called what it is
    distinct, occurrences = len(set("—Путешественник во времени") - set(" ")), len("—Путешественниквовремени")
    assert f"has {distinct} distinct characters not in the model's vocabulary ({occurrences} occurrences)" in line
    skipped = cli("eval", tmp_path / "ru.txt", "--checkpoint", trained_run, "--unknown", "skip").assert_ok()
    assert f"warning: dropped {occurrences} occurrences of characters not in the vocabulary from" in skipped.stderr


@pytest.mark.parametrize("name,data,fragment", [
    ("missing.txt", None, "not found"), ("empty.txt", b"", "empty"), ("one.txt", "t", "too short"),
    ("bad.txt", b"time \xff", "offset 5"),
])
def test_eval_bad_file(cli, trained_run, tmp_path, name, data, fragment):
    if data is not None:
        write(tmp_path / name, data)
    cli("eval", tmp_path / name, "--checkpoint", trained_run).assert_one_line_error(fragment)


def test_eval_when_the_training_corpus_changed(cli, corpus_file, tmp_path):
    cli("train", corpus_file, "--max-steps", "1", "--out", tmp_path / "run", *TINY).assert_ok()
    corpus_file.write_text(make_text(3000, seed=5))
    cli("eval", "--checkpoint", tmp_path / "run").assert_one_line_error("changed")
    corpus_file.unlink()
    cli("eval", "--checkpoint", tmp_path / "run").assert_one_line_error("moved or was deleted")


def test_no_checkpoint_and_no_runs(cli, in_empty_dir):
    for command in ("generate", "eval"):
        cli(command).assert_one_line_error("no checkpoint given")


class Pwn:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def bad_checkpoint(kind: str, tmp_path: Path, trained_run: Path) -> tuple[Path, str | None]:
    """A file (or directory) that is not a usable checkpoint, and a fragment its error names."""
    path = tmp_path / f"{kind}.pt"
    if kind == "missing":
        return path, "not found"
    if kind == "empty-dir":
        path.mkdir()
        return path, "no checkpoint"
    if kind == "truncated":
        data = (trained_run / "best.pt").read_bytes()
        return write(path, data[: len(data) // 2]), "truncated or corrupt"
    if kind == "foreign":
        torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
        return path, "not a charrnn checkpoint"
    if kind == "random":
        return write(path, random.Random(0).randbytes(4096)), None
    if kind == "empty-file":
        return write(path, b""), None
    if kind == "hostile-pickle":
        return write(path, pickle.dumps(Pwn(tmp_path / "pwned"))), "not a charrnn checkpoint"  # never unpickled
    if kind == "hostile-torch":
        torch.save(Pwn(tmp_path / "pwned"), path)
        return path, "refusing"
    if kind == "hostile-inside":
        torch.save({"format": FORMAT, "version": FORMAT_VERSION, "model_config": Pwn(tmp_path / "pwned"),
                    "vocab": {}, "model": {}}, path)
        return path, "refusing"
    raise AssertionError(kind)


BAD_CHECKPOINTS = ["missing", "empty-dir", "truncated", "foreign", "random", "empty-file",
                   "hostile-pickle", "hostile-torch", "hostile-inside"]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("command", ["generate", "eval"])
@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoint(cli, trained_run, tmp_path, command, kind):
    path, fragment = bad_checkpoint(kind, tmp_path, trained_run)
    fragments = [fragment] if fragment else []
    cli(command, "--checkpoint", path).assert_one_line_error(*fragments)
    assert not (tmp_path / "pwned").exists(), "loading the checkpoint ran code from it"


def test_text_file_as_checkpoint(cli, tmp_path):
    write(tmp_path / "notes.txt", "hello world\n")
    cli("generate", "--checkpoint", tmp_path / "notes.txt").assert_one_line_error()


def test_vocabulary_smaller_than_the_model(cli, trained_run, tmp_path):
    ckpt = load_checkpoint(trained_run / "best.pt")
    ckpt["vocab"] = {"tokens": ckpt["vocab"]["tokens"][:3], "unk": False}
    torch.save(ckpt, tmp_path / "shrunk.pt")
    cli("generate", "--checkpoint", tmp_path / "shrunk.pt", "--length", "50", "--seed", "0").assert_one_line_error()


# ---------------------------------------------------------------- the real command, in a real process


def run_charrnn(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "charrnn", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_process_error(proc: subprocess.CompletedProcess, fragment: str):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


def test_process_missing_corpus_is_one_line(tmp_path):
    assert_process_error(run_charrnn("train", tmp_path / "nope.txt", cwd=tmp_path), "not found")
    assert not (tmp_path / "runs").exists()


def test_process_hostile_checkpoint_runs_nothing_and_is_one_line(tmp_path):
    """`charrnn generate --checkpoint evil.pt` in a real process: a torch.save archive
    whose pickle would run a command when unpickled."""
    torch.save(Pwn(tmp_path / "pwned"), tmp_path / "evil.pt")
    proc = run_charrnn("generate", "--checkpoint", tmp_path / "evil.pt", cwd=tmp_path)
    assert not (tmp_path / "pwned").exists()
    assert proc.stdout == ""
    assert_process_error(proc, "error: refusing to load")


def test_closing_sample_prefix_is_normalised_like_generate(cli, corpus_file, tmp_path):
    write(tmp_path / "p.toml", 'normalize = "letters"\nsample_prefix = "The Time"\nsample_length = 5\n'
                               'sample_greedy = true\n')
    out = cli("train", corpus_file, "--config", tmp_path / "p.toml", "--max-steps", "1",
              "--out", tmp_path / "run", *TINY).assert_ok().stdout
    sample = re.search(r"^sample: (.*)$", out, re.M).group(1)
    expected = gen(cli, tmp_path / "run", "--prefix", "The Time", "--length", "5", "--greedy").rstrip("\n")
    assert sample == expected
