"""One meaning of "validation loss": `charrnn eval` reproduces what training logged for the
checkpoint, the figure hardly depends on how many streams the text is cut into, and the
evaluation helpers leave the model in the mode they found it in."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from charrnn.scoring import evaluation
from charrnn.storage.checkpoint import load_checkpoint, save_checkpoint
from charrnn.corpus.vocab import Vocab
from charrnn.scoring.evaluation import evaluate, recorded_layout
from charrnn.inspection.surprisal import surprisal
from charrnn.model import ModelConfig, build_model
from charrnn.generation.sample import warm_up

from conftest import TINY, make_text


def logged_best(run) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return min(r["val_loss"] for r in records)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_eval_reproduces_the_logged_best_validation_loss(cli, tmp_path, sampling):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(3000, seed=3), encoding="utf-8")
    run = tmp_path / "run"
    cli("train", corpus, "--max-steps", "10", "--sampling", sampling, "--out", run, *TINY).assert_ok()
    result = json.loads(cli("eval", "--checkpoint", run, "--json").assert_ok().stdout)
    assert result["loss"] == pytest.approx(logged_best(run), abs=1e-6)
    assert recorded_layout(load_checkpoint(run / "best.pt")) == {
        "batch_size": 4, "seq_len": 16, "carry_state": sampling == "sequential"}


def test_a_checkpoint_without_the_layout_falls_back_to_its_settings(cli, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = load_checkpoint(run / "best.pt")
    del ckpt["evaluation"]
    save_checkpoint(ckpt, run / "best.pt")
    result = json.loads(cli("eval", "--checkpoint", run, "--json").assert_ok().stdout)
    assert result["loss"] == pytest.approx(logged_best(run), abs=1e-6)


def test_eval_options_override_the_recorded_layout(cli, trained_run):
    recorded = json.loads(cli("eval", "--checkpoint", trained_run, "--json").assert_ok().stdout)
    one = json.loads(cli("eval", "--checkpoint", trained_run, "--json", "--batch-size", "1",
                         "--seq-len", "7").assert_ok().stdout)
    model, ids = trained_model_and_val(trained_run)
    total, count = evaluate(model, ids, batch_size=1, seq_len=7)
    assert one["loss"] == pytest.approx(total / count, rel=1e-9)
    assert one["loss"] != recorded["loss"]


def trained_model_and_val(run):
    from charrnn.storage.load import load_model
    from charrnn.corpus.data import reload_corpus

    model, _, ckpt = load_model(run, "cpu")
    return model, reload_corpus(ckpt["corpus"]).val_ids


@pytest.fixture(scope="module")
def learned_model():
    """A small LSTM trained for a few hundred steps on generated text: its state carries
    enough of the past for a cold start to cost something."""
    torch.manual_seed(0)
    text = make_text(6000, seed=4)
    vocab = Vocab(text)
    ids = vocab.encode(text).long()
    model = build_model(ModelConfig(len(vocab), "lstm", 32, 1, init_sigma=0.1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    starts = torch.arange(0, len(ids) - 33, 32)
    for step in range(150):
        rows = starts[torch.randint(len(starts), (16,))][:, None] + torch.arange(33)
        logits, _ = model(ids[rows[:, :-1]])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[rows[:, 1:]].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), vocab


def mean_loss(model, ids, streams):
    total, count = evaluate(model, ids, batch_size=streams, seq_len=16)
    assert count == len(ids) - 1  # every character after the first, whatever the cut
    return total / count


def test_the_number_of_streams_hardly_matters(learned_model, monkeypatch):
    model, vocab = learned_model
    ids = vocab.encode(make_text(12000, seed=5)[:9000])
    gap = abs(mean_loss(model, ids, 8) - mean_loss(model, ids, 64))
    assert gap < 0.002
    monkeypatch.setattr(evaluation, "WARM_UP", 0)  # cold starts: the gap the warm-up closes
    cold_gap = abs(mean_loss(model, ids, 8) - mean_loss(model, ids, 64))
    assert cold_gap > 2 * gap


def test_one_stream_is_the_loss_of_the_whole_text(learned_model):
    model, vocab = learned_model
    ids = vocab.encode(make_text(500, seed=6))
    total, count = evaluate(model, ids, batch_size=1, seq_len=7)
    with torch.no_grad():
        logits, _ = model(ids[None, :-1].long())
    assert total == pytest.approx(F.cross_entropy(logits[0], ids[1:].long(), reduction="sum").item(), rel=1e-6)


def test_evaluation_helpers_run_in_eval_mode_and_restore_the_mode():
    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ,")
    model = build_model(ModelConfig(len(vocab), "gru", 16, 2, dropout=0.5, init_sigma=0.5))
    ids = vocab.encode("a bad egg face, a cafe bag " * 4)
    model.eval()
    expected = (evaluate(model, ids, batch_size=2, seq_len=8), warm_up(model, ids)[1],
                surprisal(model, vocab, vocab.decode(ids)))
    model.train()
    got = (evaluate(model, ids, batch_size=2, seq_len=8), warm_up(model, ids)[1],
           surprisal(model, vocab, vocab.decode(ids)))
    assert model.training
    assert got[0] == expected[0]
    assert torch.equal(got[1], expected[1])  # no dropout in the warm-up
    assert got[2] == expected[2]


# ---------------------------------------------------------------- evaluation


def test_evaluate_with_carried_state_is_the_loss_of_the_whole_stream():
    torch.manual_seed(0)
    model = build_model(ModelConfig(9, "gru", 8, 2, init_sigma=0.5)).double()
    ids = torch.randint(0, 9, (101,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    total, count = evaluate(model, ids, batch_size=1, seq_len=7, carry_state=True)
    with torch.no_grad():
        logits, _ = model(ids[:-1].long()[None])
    expected = F.cross_entropy(logits[0], ids[1:].long(), reduction="sum").item()
    assert count == 100
    assert total == pytest.approx(expected, rel=1e-9)
    assert model.training  # restored


def test_evaluate_windows_start_from_a_zero_state():
    torch.manual_seed(0)
    model = build_model(ModelConfig(9, "rnn", 8, 1, init_sigma=0.5)).double()
    ids = torch.randint(0, 9, (30,), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    total, count = evaluate(model, ids, batch_size=4, seq_len=5, carry_state=False)
    expected = 0.0
    with torch.no_grad():
        for start in range(len(ids) - 5):
            window = ids[start : start + 6].long()
            logits, _ = model(window[None, :-1])
            expected += F.cross_entropy(logits[0], window[1:], reduction="sum").item()
    assert count == 25 * 5
    assert total == pytest.approx(expected, rel=1e-9)
