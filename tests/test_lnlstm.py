"""The layer-normalised LSTM (charrnn/cells/lnlstm.py): its scan's hand-written backward is
gradient-checked in float64, the scan equals its step run step by step under autograd, and
a model of it goes through every command, stacked, with an embedding, over bytes, resumed."""

from __future__ import annotations

import json

import pytest
import torch

from charrnn.cells.lnlstm import LNLSTMScratch, lnlstm_scan, normalized
from charrnn.cells.scan import Gathered

DT = torch.float64


def scan_inputs(T, B, H, seed=0):
    """[xp, h0, c0, W_hh, g_h, g_c, b_c] in float64, large enough that every nonlinearity matters."""
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(T, B, 4 * H, generator=g, dtype=DT)
    h0, c0 = (0.5 * torch.randn(B, H, generator=g, dtype=DT) for _ in range(2))
    W = torch.randn(H, 4 * H, generator=g, dtype=DT) / H**0.5
    g_h, g_c = (1 + 0.3 * torch.randn(n, generator=g, dtype=DT) for n in (4 * H, H))
    b_c = 0.3 * torch.randn(H, generator=g, dtype=DT)
    return [a.requires_grad_() for a in (xp, h0, c0, W, g_h, g_c, b_c)]


@pytest.mark.parametrize("which", ["all", "outputs", "final"])
def test_gradcheck(which):
    pick = {"all": slice(None), "outputs": slice(0, 1), "final": slice(1, None)}[which]
    assert torch.autograd.gradcheck(lambda *a: lnlstm_scan(*a)[pick], scan_inputs(3, 2, 3))


def test_gradcheck_with_a_gathered_input():
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 5, (2, 4), generator=g).T  # (T, B), strided as the model's X.T is
    table = torch.randn(5, 12, generator=g, dtype=DT, requires_grad=True)
    rest = scan_inputs(4, 2, 3, seed=5)[1:]
    assert torch.autograd.gradcheck(lambda table, *r: lnlstm_scan(Gathered(table, tokens), *r), [table, *rest])


@pytest.mark.parametrize("T, B", [(1, 1), (5, 3), (9, 2)])
def test_scan_equals_the_cells_loop_in_values_and_gradients(T, B):
    torch.manual_seed(T)
    cell = LNLSTMScratch(4, 5, sigma=0.5).double()
    with torch.no_grad():
        for p in (cell.g_x, cell.g_h, cell.g_c, cell.b_c, cell.b_h):
            p.add_(0.3 * torch.randn_like(p))
    X = torch.randn(T, B, 4, dtype=DT)
    state = tuple(0.5 * torch.randn(B, 5, dtype=DT) for _ in range(2))
    results = []
    for run in (cell.recur, cell.loop):
        out, (h, c) = run(cell.project(X), state)
        loss = (out * torch.arange(out.numel(), dtype=DT).view(out.shape).sin()).sum() + h.sum() + c.square().sum()
        results.append([out, h, c, *torch.autograd.grad(loss, list(cell.parameters()))])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    with torch.no_grad():  # the plain forward, which saves nothing
        out, (h, c) = cell.recur(cell.project(X), state)
    torch.testing.assert_close(c, results[1][2], rtol=1e-9, atol=1e-9)


def test_layer_norm_is_the_papers():
    v = torch.randn(3, 8, dtype=DT)
    y, r = normalized(v)
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(v, (8,), eps=1e-5))
    torch.testing.assert_close(r[:, 0], 1 / (v.var(1, unbiased=False) + 1e-5).sqrt())


def test_the_forget_bias_starts_the_forget_gate_alone():
    from charrnn.model import ModelConfig, build_model

    model = build_model(ModelConfig(vocab_size=6, cell="lnlstm", hidden=4, forget_bias=1.0, init="torch"))
    b = model.rnn.cells[0].b_h.detach()
    assert torch.all(b[4:8] == 1) and torch.all(b[:4] == 0) and torch.all(b[8:] == 0)


@pytest.mark.parametrize("extra", [["--layers", "2", "--embedding", "4", "--dropout", "0.1"],
                                   ["--vocab", "bytes", "--weight-drop", "0.1"]], ids=["stacked-embedding", "bytes"])
def test_every_command_runs_on_a_model_of_it(tmp_path, cli, corpus_file, extra):
    run = tmp_path / "run"
    tiny = ["--hidden", "8", "--batch-size", "4", "--seq-len", "16", "--eval-every", "2", "--quiet"]
    cli("train", corpus_file, "--cell", "lnlstm", "--max-steps", "2", "--out", run, *tiny, *extra).assert_ok()
    cli("train", "--resume", run, "--max-steps", "4", "--quiet").assert_ok()
    assert json.loads(cli("info", run, "--json").assert_ok().stdout)["model"]["cell"] == "lnlstm"
    for args in (["--greedy"], ["--beam", "3"], ["--samples", "2", "--json"], ["--stop", "e"]):
        cli("generate", "--checkpoint", run, "--length", "20", "--prefix", "the", *args).assert_ok()
    for args in ([], ["--show"], ["--show", "--neuron", "1:2c"], ["--dynamic"]):
        cli("eval", corpus_file, "--checkpoint", run, *args).assert_ok()
    cli("neurons", corpus_file, "--checkpoint", run).assert_ok()
    serve_answers(run)


def serve_answers(run):
    """`charrnn serve`'s two API calls on the run's model."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from charrnn.storage.load import load_model
    from charrnn.config import ServeLimits
    from charrnn.serve import create_app

    model, vocab, ckpt = load_model(run, "cpu")
    client = TestClient(create_app(model, vocab, ckpt, "the run", ServeLimits(max_length=50, max_text=100)))
    assert len(client.post("/api/generate", json={"prefix": "the", "length": 10, "greedy": True}).text) == 10
    shaded = client.post("/api/eval", json={"text": "the time", "neuron": "1:1c"}).json()
    assert len(shaded["activations"]) == len("the time")
