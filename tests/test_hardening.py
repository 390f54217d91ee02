"""The promises of README's "What charrnn guarantees": whatever a user feeds it, charrnn
works or says in one line what is wrong; a crash or kill loses at most the steps since the
last checkpoint; a stranger's checkpoint can be inspected without danger."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charrnn.storage.checkpoint
import charrnn.corpus.sources
import charrnn.corpus.text
import charrnn.training.train
from charrnn.storage.checkpoint import FORMAT_VERSION, load_checkpoint
from charrnn.cli.main import app
from charrnn.corpus.data import load_corpus
from charrnn.errors import CharrnnError
from charrnn.generation.sample import generate
from charrnn.corpus.text import Text, read_text
from charrnn.training.train import TrainConfig, train
from charrnn.training.report import Reporter

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TEXT = "the time machine, by h. g. wells. the time traveller was expounding a recondite matter to us.\n" * 8
TINY = dict(cell="rnn", hidden=8, batch_size=2, seq_len=8, eval_every=2, device="cpu")


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def tiny(tmp_path: Path, corpus: Path, **settings) -> TrainConfig:
    return TrainConfig(**{**TINY, "corpus": str(corpus), "out": str(tmp_path / "run"), "max_steps": 4, **settings})


def cli(*args: str):
    """Run the CLI in-process; (exit code, stdout, stderr); anything but a clean exit fails."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str) -> str:
    assert code != 0
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    return stderr


def sample(run: Path, prefix: str = "", length: int = 20) -> str:
    code, out, err = cli("generate", "--checkpoint", str(run), "--prefix", prefix, "--length", str(length),
                         "--seed", "0")
    assert code == 0, err
    return out


# ---------------------------------------------------------------- corpus edge cases


def test_a_byte_order_mark_is_removed_and_said(tmp_path):
    corpus = load_corpus(write(tmp_path / "c.txt", b"\xef\xbb\xbf" + TEXT.encode()))
    assert "\ufeff" not in corpus.vocab.idx_to_token
    assert corpus.vocab.decode(corpus.train_ids[:3]) == "the"
    assert any("byte-order mark" in note for note in corpus.notes)
    code, _, err = cli("train", str(tmp_path / "c.txt"), "--out", str(tmp_path / "run"), "--max-steps", "2",
                       "--hidden", "8", "--cell", "rnn", "--batch-size", "2", "--seq-len", "8", "-q")
    assert code == 0 and "warning: removed the UTF-8 byte-order mark" in err


def test_crlf_line_endings_are_kept_as_they_are(tmp_path):
    corpus = load_corpus(write(tmp_path / "c.txt", TEXT.replace("\n", "\r\n")))
    assert "\r" in corpus.vocab.idx_to_token
    assert corpus.vocab.decode(corpus.train_ids).count("\r\n") == corpus.vocab.decode(corpus.train_ids).count("\n")


@pytest.mark.parametrize("chunk", [3, 1 << 18])
def test_nul_and_invalid_bytes_name_their_offset_whatever_the_read_chunk(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(charrnn.corpus.text, "READ_CHUNK", chunk)
    with pytest.raises(CharrnnError, match="NUL byte at offset 13$"):
        read_text(write(tmp_path / "nul.txt", "héllo wörld\x00more".encode()))
    with pytest.raises(CharrnnError, match="byte 0xff at offset 13 is invalid$"):
        read_text(write(tmp_path / "bad.txt", "héllo wörld 😀".encode()[:13] + b"\xff rest"))
    with pytest.raises(CharrnnError, match="UTF-16 byte-order mark"):
        read_text(write(tmp_path / "utf16.txt", "hello".encode("utf-16")))
    with pytest.raises(CharrnnError, match="is empty$"):
        read_text(write(tmp_path / "bom-only.txt", b"\xef\xbb\xbf"))


def test_a_single_line_without_a_newline_trains_and_generates(tmp_path):
    train(tiny(tmp_path, write(tmp_path / "c.txt", TEXT.replace("\n", " ").strip())))
    assert len(sample(tmp_path / "run", "the ")) == len("the ") + 20 + 1


def test_a_corpus_of_one_distinct_character_trains_and_generates(tmp_path):
    summary = train(tiny(tmp_path, write(tmp_path / "c.txt", "a" * 200)))
    assert summary["val_loss"] == 0.0  # one choice: the model cannot be wrong
    assert sample(tmp_path / "run", "aa") == "a" * 22 + "\n"
    code, out, err = cli("generate", "--checkpoint", str(tmp_path / "run"), "--prefix", "b")
    assert "'b'" in assert_one_line_error(code, err)


def test_characters_outside_the_basic_multilingual_plane_round_trip(tmp_path):
    text = "時間の機械 🕰️ the time machine 🚀 走る 😀\n" * 10
    train(tiny(tmp_path, write(tmp_path / "c.txt", text)))
    out = sample(tmp_path / "run", "時間🚀", length=30)
    assert out.startswith("時間🚀") and set(out[:-1]) <= set(text)


def test_a_vocabulary_of_thousands_of_characters_uses_int16_ids(tmp_path):
    text = "".join(chr(0x4E00 + i) for i in range(3000)) * 2
    corpus = load_corpus(write(tmp_path / "c.txt", text), val_fraction=0.5)
    assert len(corpus.vocab) == 3000 and corpus.train_ids.dtype == torch.int16
    assert corpus.vocab.decode(corpus.train_ids) == text[:3000]
    train(tiny(tmp_path, tmp_path / "c.txt", val_fraction=0.5, max_steps=2))
    assert len(sample(tmp_path / "run", chr(0x4E00), length=5)) == 1 + 5 + 1


def test_a_file_that_changes_while_training_is_trained_as_read_and_resume_refuses_it(tmp_path):
    corpus = write(tmp_path / "c.txt", TEXT)

    class Rewriter(Reporter):
        def evaluation(self, record):
            corpus.write_text("something else entirely: XYZ\n" * 30)

    train(tiny(tmp_path, corpus), Rewriter())
    assert "X" not in load_checkpoint(tmp_path / "run" / "last.pt")["vocab"]["tokens"]
    with pytest.raises(CharrnnError, match="changed since training"):
        train(tiny(tmp_path, corpus, max_steps=6), resume=tmp_path / "run")


def test_validation_characters_outside_the_vocabulary_error_or_are_skipped(tmp_path):
    corpus, val = write(tmp_path / "c.txt", TEXT), write(tmp_path / "v.txt", "the time machine Ωμέγα\n" * 4)
    with pytest.raises(CharrnnError, match=r"has 5 distinct characters not in the model's vocabulary \(20 occurrences\): 'Ω', 'έ'.*--unknown skip"):
        load_corpus(str(corpus), val_file=str(val))
    skipped = load_corpus(str(corpus), val_file=str(val), unknown="skip")
    assert skipped.vocab.decode(skipped.val_ids) == "the time machine \n" * 4
    assert skipped.notes == ["dropped 20 occurrences of characters not in the vocabulary from the validation text (--unknown skip)"]

    train(tiny(tmp_path, corpus, val_file=str(val), unknown="skip"))
    code, _, err = cli("eval", str(val), "--checkpoint", str(tmp_path / "run"))
    assert "'Ω'" in assert_one_line_error(code, err)
    code, out, err = cli("eval", str(val), "--checkpoint", str(tmp_path / "run"), "--unknown", "skip", "--json")
    assert code == 0 and json.loads(out)["chars"] == len("the time machine \n" * 4) - 1
    assert "dropped 20 occurrences" in err
    with pytest.raises(CharrnnError, match="--unknown must be one of error, skip"):
        TrainConfig(unknown="ignore")


def test_a_preset_with_a_wrong_type_is_one_line(tmp_path):
    write(tmp_path / "p.toml", 'hidden = "256"\n')
    code, _, err = cli("train", "--config", str(tmp_path / "p.toml"))
    assert "hidden must be int, got '256'" in assert_one_line_error(code, err)


# ---------------------------------------------------------------- the encoding cache


def test_resume_reads_the_encoded_cache_instead_of_the_text(tmp_path, monkeypatch):
    corpus = write(tmp_path / "c.txt", TEXT)
    train(tiny(tmp_path, corpus))
    source = load_checkpoint(tmp_path / "run" / "last.pt")["corpus"]
    assert (tmp_path / "run" / f"encoded-{source['sha256'][:16]}.pt").is_file()

    def no_reading(*args, **kwargs):
        raise AssertionError("the text was read again")

    monkeypatch.setattr(charrnn.corpus.sources, "read_text", no_reading)
    assert train(tiny(tmp_path, corpus, max_steps=6), resume=tmp_path / "run")["steps"] == 6


def test_a_damaged_cache_is_rebuilt_and_a_changed_text_still_caught(tmp_path):
    corpus = write(tmp_path / "c.txt", TEXT)
    train(tiny(tmp_path, corpus))
    (cache,) = (tmp_path / "run").glob("encoded-*.pt")
    cache.write_bytes(b"garbage")
    assert train(tiny(tmp_path, corpus, max_steps=6), resume=tmp_path / "run")["steps"] == 6
    assert cache.stat().st_size > 100  # written again
    corpus.write_text(TEXT.upper())
    with pytest.raises(CharrnnError, match="changed since training"):
        train(tiny(tmp_path, corpus, max_steps=8), resume=tmp_path / "run")


# ---------------------------------------------------------------- faults


def test_sigkill_at_random_moments_never_leaves_a_broken_checkpoint(tmp_path):
    """Kill `charrnn train` (evaluating and saving every 2 steps) at random moments; every
    time, best.pt and last.pt load and the run resumes from where they are. The random
    delay counts from the first evaluation of each process, not from its start: importing
    torch takes a second or two, and a kill then would test nothing."""
    corpus, run = write(tmp_path / "c.txt", TEXT), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "charrnn", "train"]
    fresh = [str(corpus), "--out", str(run), "--cell", "rnn", "--hidden", "8", "--batch-size", "2",
             "--seq-len", "8", "--eval-every", "2", "--max-steps", "1000000", "--device", "cpu", "-q"]
    rng, kills, steps = random.Random(0), 0, []
    metrics = run / "metrics.jsonl"
    while kills < 5:  # a count, not a time: a loaded machine only makes it slower
        resumable = (run / "last.pt").exists() or (run / "best.pt").exists()
        seen = metrics.stat().st_size if metrics.exists() else 0
        proc = subprocess.Popen(command + (["--resume", str(run)] if resumable else fresh), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        hung = time.monotonic() + 300  # only against a hang: a slow start is waited for
        while not metrics.exists() or metrics.stat().st_size == seen:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < hung, "no evaluation in 5 minutes"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))  # now it is training, evaluating and saving
        proc.kill()
        proc.wait()
        proc.stderr.close()
        kills += 1
        for name in ("best.pt", "last.pt"):
            if (run / name).exists():
                load_checkpoint(run / name)
        if (run / "last.pt").exists():
            steps.append(load_checkpoint(run / "last.pt")["progress"]["step"])
    assert steps == sorted(steps) and steps[-1] > 0  # never back before a checkpoint
    finish = steps[-1] + 2
    done = subprocess.run(command + ["--resume", str(run), "--max-steps", str(finish)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(run / "last.pt")["progress"]["step"] == finish
    assert not list(run.glob(".*.tmp"))  # what killed saves left behind is cleared
    assert all(json.loads(line) for line in metrics.read_text().splitlines())


def test_a_read_only_run_directory_is_reported_before_training(tmp_path, monkeypatch):
    corpus = write(tmp_path / "c.txt", TEXT)
    blocker = write(tmp_path / "a-file", "")
    with pytest.raises(CharrnnError, match="cannot create the run directory .*: Not a directory$"):
        train(tiny(tmp_path, corpus, out=str(blocker / "run")))

    real_write = Path.write_bytes

    def read_only(self, data):
        if self.name == ".write-test":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_write(self, data)

    class NoTraining(Reporter):
        def start(self, info):
            raise AssertionError("training started")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(CharrnnError, match="cannot write to the run directory .*: Read-only file system$"):
        train(tiny(tmp_path, corpus), NoTraining())
    if os.geteuid() != 0:  # root writes through permissions
        monkeypatch.undo()
        (tmp_path / "locked").mkdir(mode=0o500)
        with pytest.raises(CharrnnError, match="cannot write to the run directory"):
            train(tiny(tmp_path, corpus, out=str(tmp_path / "locked")), NoTraining())


def test_a_full_disk_at_a_save_stops_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    corpus = write(tmp_path / "c.txt", TEXT)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FillDisk(Reporter):
        def evaluation(self, record):  # after the first checkpoint, the disk is full
            monkeypatch.setattr(charrnn.storage.checkpoint.torch, "save", disk_full)

    with pytest.raises(CharrnnError) as failure:
        train(tiny(tmp_path, corpus, max_steps=10), FillDisk())
    message = str(failure.value)
    assert "\n" not in message and "No space left on device; the previous one is kept" in message
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["step"] == 2
    assert not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize("wild_lr", [1e6, float("inf")])
def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, wild_lr):
    corpus = write(tmp_path / "c.txt", TEXT)
    monkeypatch.setattr(charrnn.training.train, "lr_at", lambda config, progress, step, *scale: 2e-3 if step < 4 else wild_lr)
    with pytest.raises(CharrnnError) as failure:
        train(tiny(tmp_path, corpus, max_steps=20, clip=1e30))
    message = str(failure.value)
    assert message.startswith("training diverged at step 6: ") and "lower --lr" in message and "\n" not in message
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["progress"]["step"] == 4
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


@pytest.mark.parametrize("version, says", [(FORMAT_VERSION + 1, "(upgrade charrnn)"),
                                           (FORMAT_VERSION - 1, "written by an older charrnn"),
                                           ("one", "no valid checkpoint format version")])
def test_other_checkpoint_format_versions_are_one_line(tmp_path, version, says):
    train(tiny(tmp_path, write(tmp_path / "c.txt", TEXT), max_steps=2))
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    torch.save({**payload, "version": version}, tmp_path / "other.pt")
    for command in (["generate"], ["eval"], ["info"], ["train", "--resume"]):
        option = [] if command[-1] in ("--resume", "info") else ["--checkpoint"]
        code, _, err = cli(*command, *option, str(tmp_path / "other.pt"))
        assert says in assert_one_line_error(code, err)


def test_a_damaged_checkpoint_is_one_line(tmp_path):
    train(tiny(tmp_path, write(tmp_path / "c.txt", TEXT), max_steps=2))
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    cases = {
        "truncated.pt": (tmp_path / "run" / "best.pt").read_bytes()[:3000],
        "huge.pt": {**payload, "model_config": {**payload["model_config"], "hidden": 10**12}},
        "many-layers.pt": {**payload, "model_config": {**payload["model_config"], "layers": 10**9}},
        "nan.pt": {**payload, "model": {k: torch.full_like(v, float("nan")) for k, v in payload["model"].items()}},
        "vocab.pt": {**payload, "vocab": {"tokens": ["a"], "unk": False}},
        "corpus.pt": {**payload, "corpus": {"kind": "file"}},
        "cell.pt": {**payload, "model_config": {**payload["model_config"], "cell": 5}},
    }
    for name, content in cases.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            torch.save(content, tmp_path / name)
        code, _, err = cli("eval", "--checkpoint", str(tmp_path / name))
        assert_one_line_error(code, err)
        code, _, err = cli("info", str(tmp_path / name))
        if code:  # info shows what it can (a NaN weight is still a checkpoint to look at)
            assert_one_line_error(code, err)
    code, _, err = cli("train", "--resume", str(tmp_path / "corpus.pt"))
    assert_one_line_error(code, err)


# ---------------------------------------------------------------- security


class Pwn:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def hostile_checkpoints(tmp_path: Path) -> dict[str, Path]:
    marker = tmp_path / "pwned"
    payload = {"format": "charrnn-checkpoint", "version": FORMAT_VERSION, "model_config": {},
               "vocab": {}, "model": Pwn(marker)}
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps(payload))
    zipped = tmp_path / "zipped.pt"
    torch.save(payload, zipped)
    return {"plain pickle": plain, "torch.save zip": zipped}


def test_the_hostile_payload_is_real(tmp_path):
    """The control: unpickled the unsafe way, the payload does run its command."""
    pickle.loads(hostile_checkpoints(tmp_path)["plain pickle"].read_bytes())
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("command", [["generate", "--checkpoint"], ["eval", "--checkpoint"], ["info"],
                                     ["train", "--resume"], ["train", "--resume", "<run>"]])
def test_a_hostile_checkpoint_runs_nothing_and_is_one_line(tmp_path, command):
    for kind, path in hostile_checkpoints(tmp_path).items():
        if command[-1] == "<run>":  # a run directory whose last.pt is the hostile file
            (tmp_path / "run").mkdir(exist_ok=True)
            path = Path(os.replace(path, tmp_path / "run" / "last.pt") or tmp_path / "run")
            command = command[:-1]
        code, _, err = cli(*command, str(path))
        says = "refusing to load" if kind == "torch.save zip" else "not a PyTorch zip archive"
        assert says in assert_one_line_error(code, err), kind
        assert not (tmp_path / "pwned").exists(), kind


def test_generation_prefixes_work_or_are_one_line(tmp_path):
    """The CLI side of the property tests: argv can carry lone surrogates (undecodable bytes)."""
    train(tiny(tmp_path, write(tmp_path / "c.txt", TEXT), max_steps=2))
    for prefix in ("the", "", "\udcff", "😀"):
        code, out, err = cli("generate", "--checkpoint", str(tmp_path / "run"), "--prefix", prefix, "--length", "3")
        if code:
            assert "not in the model's vocabulary" in assert_one_line_error(code, err)
        else:
            assert out.startswith(prefix)
    with pytest.raises(CharrnnError, match="--temperature must be a finite number >= 0, got nan"):
        list(generate(*load_tiny_model(tmp_path / "run"), "the", 3, temperature=float("nan")))
    with pytest.raises(CharrnnError, match="--temperature must be a finite number >= 0, got inf"):
        list(generate(*load_tiny_model(tmp_path / "run"), "the", 3, temperature=float("inf")))


def load_tiny_model(run: Path):
    from charrnn.storage.load import load_model

    model, vocab, _ = load_model(run, "cpu")
    return model, vocab


def test_text_from_str_keeps_lone_surrogates():
    text = Text.from_str("a\ud800b")
    assert [text.chars[i] for i in text.ids.tolist()] == ["a", "\ud800", "b"]
