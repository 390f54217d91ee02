"""The training loop: carried state, determinism, metrics and checkpoints, exact resume,
precision options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import charrnn.training.run as run_module
from charrnn.corpus.batches import StreamBatches
from charrnn.storage.checkpoint import load_checkpoint
from charrnn.config import TrainConfig
from charrnn.corpus.data import load_corpus
from charrnn.training.train import train
from charrnn.training.report import Reporter

from conftest import make_text


def tiny_config(corpus: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(corpus=str(corpus), out=str(out), cell="lstm", hidden=8, batch_size=4, seq_len=8,
                  max_steps=4, eval_every=100)
    values.update(overrides)
    return TrainConfig(**values)


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- the carried state in train()


def record_training_calls(monkeypatch):
    """Wrap the model train() builds so every training forward call is recorded as
    (inputs, the state passed in, the state returned)."""
    calls = []
    real_build = run_module.build_model

    def build(config):
        model = real_build(config)
        forward = model.forward

        def recording_forward(X, state=None):
            logits, new_state = forward(X, state)
            if model.training:
                calls.append((X.clone(), state, new_state))
            return logits, new_state

        model.forward = recording_forward
        return model

    monkeypatch.setattr(run_module, "build_model", build)
    return calls


def flat(state):
    if state is None:
        return None
    out = []
    for layer in state:
        out.extend(layer if isinstance(layer, tuple) else [layer])
    return out


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_sequential_training_carries_the_state_across_batches(tmp_path, monkeypatch, cell):
    text = make_text(400)
    (tmp_path / "c.txt").write_text(text)
    calls = record_training_calls(monkeypatch)
    config = tiny_config(tmp_path / "c.txt", tmp_path / "run", cell=cell, layers=2, max_steps=12)
    train(config)
    corpus = load_corpus(str(tmp_path / "c.txt"))
    ids = corpus.train_ids.long()
    length = (len(ids) - 8) // 4  # room for a start offset of up to 7
    per_epoch = length // 8
    assert per_epoch < 12, "the test must cross an epoch boundary"
    assert len(calls) == 12
    offsets = StreamBatches(ids, 4, 8, seed=config.seed)
    for step, (X, state_in, _) in enumerate(calls):
        index, start = step % per_epoch, offsets.offset(step // per_epoch)
        # batch `index` is the next 8 characters of every one of the 4 contiguous streams
        expected = torch.stack([ids[start + b * length + index * 8 : start + b * length + index * 8 + 8]
                                for b in range(4)])
        assert torch.equal(X, expected)
        if index == 0:
            assert state_in is None  # every epoch starts every stream from a zero state
        else:
            previous_out = flat(calls[step - 1][2])
            for a, b in zip(flat(state_in), previous_out):
                assert not a.requires_grad  # detached: truncated BPTT
                assert torch.equal(a, b.detach())


def test_random_sampling_starts_every_batch_from_zero(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text(make_text(400))
    calls = record_training_calls(monkeypatch)
    train(tiny_config(tmp_path / "c.txt", tmp_path / "run", sampling="random", max_steps=3))
    assert len(calls) == 3
    assert all(state_in is None for _, state_in, _ in calls)


# ---------------------------------------------------------------- dropout in train()


def test_dropout_masks_every_training_step_afresh_and_never_the_state_or_an_evaluation(tmp_path, monkeypatch):
    (tmp_path / "c.txt").write_text(make_text(400))
    calls = []  # (training?, where the head's inputs are zero, the state returned)
    real_build = run_module.build_model

    def build(config):
        model = real_build(config)
        forward, output_layer = model.forward, model.output_layer

        def recording_output_layer(rnn_outputs):
            calls.append([model.training, rnn_outputs.detach() == 0])
            return output_layer(rnn_outputs)

        def recording_forward(X, state=None):
            logits, new_state = forward(X, state)
            calls[-1].append(flat(new_state))
            return logits, new_state

        model.output_layer, model.forward = recording_output_layer, recording_forward
        return model

    monkeypatch.setattr(run_module, "build_model", build)
    train(tiny_config(tmp_path / "c.txt", tmp_path / "run", dropout=0.5, max_steps=6, eval_every=3))
    steps = [(dropped, state) for training, dropped, state in calls if training]
    evaluations = [dropped for training, dropped, _ in calls if not training]
    assert len(steps) == 6 and evaluations
    for dropped, state in steps:
        assert 0.3 < dropped.float().mean().item() < 0.7  # about half the outputs dropped ...
        assert not any((s == 0).any() for s in state)  # ... and none of the state carried on
    assert all(not torch.equal(a, b) for (a, _), (b, _) in zip(steps, steps[1:]))  # a new mask every step
    assert not any(dropped.any() for dropped in evaluations)


# ---------------------------------------------------------------- the run as a whole


def test_training_learns_a_periodic_text(tmp_path):
    (tmp_path / "c.txt").write_text("abcd" * 150)
    summary = train(tiny_config(tmp_path / "c.txt", tmp_path / "run", cell="rnn", hidden=16, lr=0.05,
                                max_steps=40, eval_every=20))
    assert summary["steps"] == 40
    assert summary["val_loss"] < 0.3 * math.log(4)  # far below the uniform guess


def test_same_seed_same_weights_and_metrics(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(600))
    summaries = [train(tiny_config(tmp_path / "c.txt", tmp_path / name, dropout=0.3, layers=2, max_steps=3))
                 for name in ("a", "b")]
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("a", "b"))
    assert state_dicts_equal(a["model"], b["model"])
    assert summaries[0]["val_loss"] == summaries[1]["val_loss"]
    c = load_checkpoint(train(tiny_config(tmp_path / "c.txt", tmp_path / "c", seed=1, max_steps=3))["run"] + "/last.pt")
    assert not state_dicts_equal(a["model"], c["model"])


def test_metrics_best_and_last(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(600))
    summary = train(tiny_config(tmp_path / "c.txt", tmp_path / "run", max_steps=6, eval_every=2, lr=0.02))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    best = min(r["val_loss"] for r in records)
    assert summary["best_val_loss"] == pytest.approx(best)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["progress"]["best_val_loss"] == pytest.approx(best)
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["progress"]["step"] == 6
    assert summary["val_loss"] == pytest.approx(records[-1]["val_loss"])
    leftovers = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith("encoded-"))
    assert leftovers == ["best.pt", "config.toml", "last.pt", "metrics.jsonl"]  # no temporary files


def test_reporter_sees_start_evaluations_and_finish(tmp_path):
    (tmp_path / "c.txt").write_text(make_text(600))

    class Recorder(Reporter):
        def __init__(self):
            self.events = []

        def start(self, info):
            self.events.append(("start", info))

        def evaluation(self, record):
            self.events.append(("evaluation", record))

        def finish(self, summary):
            self.events.append(("finish", summary))

    recorder = Recorder()
    train(tiny_config(tmp_path / "c.txt", tmp_path / "run", max_steps=4, eval_every=2), recorder)
    kinds = [kind for kind, _ in recorder.events]
    assert kinds == ["start", "evaluation", "evaluation", "finish"]
    start = recorder.events[0][1]
    assert start["total_steps"] == 4 and start["step"] == 0


# (a constant rate: a cosine follows --max-steps, which the split run changes on resuming)
@pytest.mark.parametrize("common, split_at", [
    (dict(layers=2, dropout=0.2, max_steps=5, lr_schedule="constant"), 2),
    # 16 batches an epoch: the resume falls inside the second epoch, whose stream offset it must redraw
    (dict(dropout=0.3, locked_dropout=True, weight_drop=0.3, max_steps=40, lr_schedule="constant"), 19),
    (dict(embedding=3, max_steps=5, lr_schedule="constant"), 2),
])
def test_exact_resume_equals_an_uninterrupted_run(tmp_path, common, split_at):
    (tmp_path / "c.txt").write_text(make_text(600))
    train(tiny_config(tmp_path / "c.txt", tmp_path / "straight", **common))
    train(tiny_config(tmp_path / "c.txt", tmp_path / "split", **{**common, "max_steps": split_at}))
    summary = train(tiny_config(tmp_path / "c.txt", tmp_path / "split", **common), resume=tmp_path / "split")
    assert summary["steps"] == common["max_steps"]
    straight, split = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "split"))
    assert state_dicts_equal(straight["model"], split["model"])
    assert straight["progress"]["chars_seen"] == split["progress"]["chars_seen"]


def test_a_run_from_before_init_and_stream_offsets_existed_resumes_as_it_began(tmp_path):
    from charrnn.config import resumed_config

    (tmp_path / "c.txt").write_text(make_text(600))
    train(tiny_config(tmp_path / "c.txt", tmp_path / "old", init="book", stream_offsets="fixed"))
    ckpt = load_checkpoint(tmp_path / "old" / "last.pt")
    for name in ("init", "stream_offsets", "forget_bias", "weight_drop", "locked_dropout"):
        del ckpt["config"][name]
    torch.save(ckpt, tmp_path / "old" / "last.pt")
    values = resumed_config(ckpt, tmp_path / "old" / "last.pt", {"max_steps": 6})
    assert values["init"] == "book" and values["stream_offsets"] == "fixed"
    assert train(TrainConfig(**{**values, "max_steps": 6}), resume=tmp_path / "old")["steps"] == 6


# ---------------------------------------------------------------- precision options, devices


def test_tf32_changes_nothing_on_a_cpu_and_bf16_rounds_only_the_matmuls(tmp_path):
    """--tf32 is a CUDA option: on a CPU the run is the float32 run, bit for bit. --amp bf16
    on a CPU rounds the matmuls' operands to bfloat16: another run, close to the float32 one."""
    (tmp_path / "c.txt").write_text(make_text(600))
    plain = train(tiny_config(tmp_path / "c.txt", tmp_path / "a", device="cpu"))
    tf32 = train(tiny_config(tmp_path / "c.txt", tmp_path / "b", device="cpu", tf32=True))
    bf16 = train(tiny_config(tmp_path / "c.txt", tmp_path / "c", device="cpu", amp="bf16"))
    assert plain["val_loss"] == tf32["val_loss"]
    a, b, c = (load_checkpoint(tmp_path / name / "last.pt") for name in ("a", "b", "c"))
    assert state_dicts_equal(a["model"], b["model"])
    assert not state_dicts_equal(a["model"], c["model"])
    assert abs(bf16["val_loss"] - plain["val_loss"]) < 0.05 * plain["val_loss"]
    assert not torch.backends.cuda.matmul.allow_tf32  # left as it was


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_cuda_training_with_tf32_and_bf16_autocast(tmp_path, monkeypatch, sampling):
    """On a GPU every batch is already there (no copy from the host per step), bf16 autocast
    and TF32 train to a finite loss, and the TF32 setting is restored afterwards."""
    (tmp_path / "c.txt").write_text(make_text(2000))
    calls = record_training_calls(monkeypatch)
    before = torch.backends.cuda.matmul.allow_tf32
    summary = train(tiny_config(tmp_path / "c.txt", tmp_path / "run", device="cuda", sampling=sampling,
                                tf32=True, amp="bf16", max_steps=6, eval_every=3, hidden=32, layers=2))
    assert math.isfinite(summary["val_loss"]) and summary["steps"] == 6
    assert all(X.device.type == "cuda" for X, _, _ in calls)
    assert torch.backends.cuda.matmul.allow_tf32 == before
