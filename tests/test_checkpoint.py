"""The checkpoint file: round trip through training, safe loading, devices, and every way
a file can fail to be a checkpoint."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import charrnn.training.run as run_module
from charrnn.storage.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint, resolve_checkpoint, save_checkpoint
from charrnn.storage.load import load_model
from charrnn.config import TrainConfig
from charrnn.corpus.data import load_corpus
from charrnn.errors import CharrnnError
from charrnn.model import ModelConfig, build_model
from charrnn.training.train import train
from charrnn.corpus.vocab import Vocab

from conftest import make_text


def one_line(info) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


PLAIN = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def only_plain_values(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and only_plain_values(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(only_plain_values(v) for v in value)
    return isinstance(value, PLAIN)


@pytest.fixture
def trained_and_model(tmp_path, monkeypatch):
    """Train 3 steps through charrnn.training.train.train and keep the very model object it trained."""
    built = []
    real_build = run_module.build_model
    monkeypatch.setattr(run_module, "build_model", lambda config: built.append(real_build(config)) or built[-1])
    (tmp_path / "c.txt").write_text(make_text(600))
    config = TrainConfig(corpus=str(tmp_path / "c.txt"), out=str(tmp_path / "run"), cell="gru", hidden=8,
                         layers=2, batch_size=4, seq_len=8, max_steps=3, eval_every=100)
    train(config)
    return tmp_path / "run", built[0], load_corpus(str(tmp_path / "c.txt"))


def test_round_trip_through_training(trained_and_model):
    run, trained, corpus = trained_and_model
    model, vocab, ckpt = load_model(run / "last.pt", "cpu")
    trained_state = trained.state_dict()
    loaded_state = model.state_dict()
    assert trained_state.keys() == loaded_state.keys()
    for name in trained_state:
        assert torch.equal(trained_state[name], loaded_state[name]), name
    assert vocab == corpus.vocab
    assert vocab.idx_to_token == sorted(set(corpus.vocab.decode(corpus.train_ids)))
    X = corpus.val_ids[:40].long()[None]
    trained.eval()
    with torch.no_grad():
        assert torch.equal(model(X)[0], trained(X)[0])
    assert ckpt["model_config"] == {"vocab_size": len(vocab), "cell": "gru", "hidden": 8, "layers": 2,
                                    "dropout": 0.0, "init_sigma": 0.01, "init": "orthogonal", "forget_bias": 0.0,
                                    "weight_drop": 0.0, "locked_dropout": False, "embedding": 0}
    assert ckpt["progress"]["step"] == 3


def test_file_loads_with_plain_weights_only_torch_load(trained_and_model):
    run = trained_and_model[0]
    for name in ("best.pt", "last.pt"):
        payload = torch.load(run / name, map_location="cpu", weights_only=True)
        assert payload["format"] == FORMAT and payload["version"] == FORMAT_VERSION
        assert only_plain_values(payload)
        for key in ("model_config", "vocab", "model", "optimizer", "config", "progress", "corpus", "rng", "state"):
            assert key in payload, key


def test_run_directory_resolves_to_best(trained_and_model):
    run = trained_and_model[0]
    assert resolve_checkpoint(run) == run / "best.pt"
    (run / "best.pt").unlink()
    assert resolve_checkpoint(run) == run / "last.pt"
    (run / "last.pt").unlink()
    with pytest.raises(CharrnnError) as info:
        resolve_checkpoint(run)
    assert "no checkpoint" in one_line(info)


def test_save_is_atomic_and_an_ordinary_file(tmp_path):
    path = tmp_path / "x.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)
    save_checkpoint({"model": {"w": torch.zeros(2)}}, path)  # replaces it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.zeros(2))
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_failed_save_leaves_nothing(tmp_path):
    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    save_checkpoint({"model": {"w": torch.ones(1)}}, tmp_path / "x.pt")
    with pytest.raises(RuntimeError):
        save_checkpoint({"model": Unsaveable()}, tmp_path / "x.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]  # old file kept, no temporary left
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["model"]["w"], torch.ones(1))


def test_ctrl_c_during_a_save_stays_a_ctrl_c(tmp_path, monkeypatch):
    """Ctrl-C inside torch.save makes its zip writer raise a RuntimeError as it closes; the
    save must re-raise the KeyboardInterrupt (a clean stop, not a traceback), leaving the
    old checkpoint and no temporary file."""
    def interrupted_save(obj, f):
        try:
            f.write(b"half a checkpoint")
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 80 vs 17")

    save_checkpoint({"model": {"w": torch.ones(1)}}, tmp_path / "x.pt")
    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(1)}}, tmp_path / "x.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pt"]


def direct_checkpoint(tmp_path, **changes) -> Path:
    """A valid checkpoint written directly (no training), with optional changes."""
    torch.manual_seed(0)
    vocab = Vocab.from_text("abcdef ")
    config = ModelConfig(len(vocab), "lstm", 8, 1)
    payload = {"model_config": vars(config), "vocab": vocab.to_dict(), "model": build_model(config).state_dict()}
    payload.update(changes)
    save_checkpoint(payload, tmp_path / "direct.pt")
    return tmp_path / "direct.pt"


def test_direct_checkpoint_round_trip(tmp_path):
    path = direct_checkpoint(tmp_path)
    model, vocab, _ = load_model(path, "cpu")
    torch.manual_seed(0)
    fresh = build_model(ModelConfig(7, "lstm", 8, 1))
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    assert vocab == Vocab.from_text("abcdef ")


def test_cpu_checkpoint_maps_to_the_meta_device(tmp_path):
    path = direct_checkpoint(tmp_path)
    payload = load_checkpoint(path, map_location=torch.device("meta"))
    weights = payload["model"]
    assert all(t.device.type == "meta" for t in weights.values())
    cpu = load_checkpoint(path)["model"]
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in cpu.items()}


def test_weights_saved_on_meta_are_a_one_line_error(tmp_path):
    model = build_model(ModelConfig(7, "lstm", 8, 1)).to("meta")
    path = direct_checkpoint(tmp_path, model=model.state_dict())
    with pytest.raises(CharrnnError) as info:
        load_model(path, "cpu")
    one_line(info)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to save a checkpoint on a GPU")
def test_saved_on_cuda_loads_on_cpu(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(600))
    train(TrainConfig(corpus=str(tmp_path / "c.txt"), out=str(tmp_path / "run"), cell="lstm", hidden=8,
                      batch_size=4, seq_len=8, max_steps=2, eval_every=100, device="cuda"))
    raw = torch.load(tmp_path / "run" / "last.pt", map_location=None, weights_only=True)
    assert next(iter(raw["model"].values())).device.type == "cuda"
    model, vocab, ckpt = load_model(tmp_path / "run", "cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(t.device.type == "cpu" for t in ckpt["model"].values())
    X = vocab.encode("the time").long()[None]
    with torch.no_grad():
        cpu_logits = model(X)[0]
    gpu_model, _, _ = load_model(tmp_path / "run", "cuda")
    with torch.no_grad():
        torch.testing.assert_close(gpu_model(X.cuda())[0].cpu(), cpu_logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- files that are not checkpoints


class Pwn:
    """Unpickling this runs a shell command."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CharrnnError) as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert "not found" in one_line(info)


def test_truncated_checkpoint(tmp_path):
    good = direct_checkpoint(tmp_path)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CharrnnError) as info:
        load_checkpoint(cut)
    assert "truncated or corrupt" in one_line(info)


def test_foreign_dict(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "foreign.pt")
    with pytest.raises(CharrnnError) as info:
        load_checkpoint(tmp_path / "foreign.pt")
    assert "not a charrnn checkpoint" in one_line(info)


def test_random_bytes(tmp_path):
    (tmp_path / "r.pt").write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CharrnnError) as info:
        load_checkpoint(tmp_path / "r.pt")
    one_line(info)


def test_newer_format_asks_for_an_upgrade(tmp_path):
    path = direct_checkpoint(tmp_path, version=FORMAT_VERSION + 1)
    with pytest.raises(CharrnnError) as info:
        load_checkpoint(path)
    assert "upgrade charrnn" in one_line(info)


def test_incomplete_checkpoint(tmp_path):
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "vocab": {"tokens": ["a"], "unk": False}},
               tmp_path / "inc.pt")
    with pytest.raises(CharrnnError) as info:
        load_checkpoint(tmp_path / "inc.pt")
    assert "model_config" in one_line(info)


@pytest.mark.parametrize("how", ["pickle", "torch.save", "inside a checkpoint"])
def test_hostile_checkpoint_runs_nothing(tmp_path, how):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps(Pwn(target)))
    elif how == "torch.save":
        torch.save(Pwn(target), path)
    else:
        torch.save({"format": FORMAT, "version": FORMAT_VERSION, "model_config": Pwn(target),
                    "vocab": {}, "model": {}}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CharrnnError) as info:
            load_model(path, "cpu")
    one_line(info)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [4, 5])
def test_refused_plain_pickle_emits_no_warning(tmp_path, protocol):
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"format": FORMAT}, protocol=protocol))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CharrnnError):
            load_checkpoint(tmp_path / "p.pt")
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("change", [
    {"model_config": {"vocab_size": 7, "cell": "transformer", "hidden": 8, "layers": 1}},
    {"model_config": {"vocab_size": 7, "cell": "lstm", "hidden": 8, "layers": 1, "colour": "red"}},
    {"model_config": [7, "lstm"]},
    {"model_config": {"vocab_size": 7, "cell": "gru", "hidden": 8, "layers": 1}},  # weights of an LSTM
    {"vocab": "abcdef "},
    {"vocab": {"tokens": 5, "unk": False}},
    {"model": {"W_hq": torch.zeros(3)}},
])
def test_inconsistent_checkpoint_is_one_line(tmp_path, change):
    path = direct_checkpoint(tmp_path, **change)
    with pytest.raises(CharrnnError) as info:
        load_model(path, "cpu")
    one_line(info)


def test_vocabulary_that_does_not_fit_the_model(tmp_path):
    path = direct_checkpoint(tmp_path, vocab=Vocab.from_text("ab").to_dict())  # 2 tokens, a model for 7
    with pytest.raises(CharrnnError) as info:
        load_model(path, "cpu")
    one_line(info)


NOT_CHECKPOINTS = [
    b"hello world\n",  # a text file given by mistake
    b"a",
    b"notes: train more\n",
    b"0",
    b"\x89PNG\r\n\x1a\n" + bytes(64),
] + [bytes([first]) + random.Random(first).randbytes(64) for first in range(256)]


def test_any_file_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.pt"
    escaped = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in NOT_CHECKPOINTS:
            path.write_bytes(data)
            try:
                load_checkpoint(path)
            except CharrnnError as e:
                assert "\n" not in str(e)
            except Exception as e:  # noqa: BLE001 - what the user would see as a traceback
                escaped.append(f"{data[:12]!r}: {type(e).__name__}: {e}")
    assert escaped == []


@pytest.mark.parametrize("data", [random.Random(0).randbytes(4096), b"\x89PNG\r\n\x1a\n" + bytes(64)],
                         ids=["random", "png"])
def test_garbage_is_not_called_hostile(tmp_path, data):
    (tmp_path / "g.pt").write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CharrnnError) as info:
            load_checkpoint(tmp_path / "g.pt")
    assert "could run code" not in str(info.value)


def test_copy_of_a_trained_run_still_loads(trained_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    model, vocab, ckpt = load_model(copy, "cpu")
    original, _, _ = load_model(trained_run, "cpu")
    for a, b in zip(model.parameters(), original.parameters()):
        assert torch.equal(a, b)


def test_load_model_resolves_the_checkpoint_once_into_one_object(trained_run):
    loaded = load_model(trained_run, "cpu")
    assert loaded.path == trained_run / "best.pt" and loaded.run_dir == trained_run
    assert loaded.config.cell == "lstm" and loaded.config.vocab_size == len(loaded.vocab)
    assert loaded.checkpoint["model_config"]["cell"] == "lstm" and not loaded.model.training
    model, vocab, ckpt = loaded  # unpacks as the triple it replaced
    assert (model, vocab, ckpt) == (loaded.model, loaded.vocab, loaded.checkpoint)
