"""TrainStep: the training step, eager or replayed as a CUDA graph. The graph path's
bookkeeping (static inputs, carried and zeroed state, gradients kept, other shapes run
eagerly) is checked here on the CPU with a stand-in for the graph; tests/test_cuda.py runs
the real one. Clipping by global norm agrees with torch.nn.utils.clip_grad_norm_."""

from __future__ import annotations

import contextlib

import pytest
import torch

from charrnn.model import ModelConfig, build_model, copy_state
from charrnn.training.train_step import TrainStep, clip_gradients


class StandInGraph:
    """A CUDA graph's behaviour without CUDA: replay runs the recorded function again and
    writes its results into the tensors the capture returned (a replay overwrites the
    graph's own tensors). A real replay overwrites the gradients, so they are zeroed before
    the eager backward adds into them."""

    def __init__(self, fn, params):
        self.fn, self.params = fn, params
        self.outputs = fn()
        self.replays = 0

    def replay(self):
        self.replays += 1
        for p in self.params:
            p.grad.zero_()
        loss, state = self.fn()
        self.outputs[0].copy_(loss)
        copy_state(self.outputs[1], state)


@pytest.fixture
def stand_in_graphs(monkeypatch):
    graphs = []

    def capture(self, fn):
        graph = StandInGraph(fn, self.params)
        graphs.append(graph)
        return graph, graph.outputs

    monkeypatch.setattr(TrainStep, "_capture_graph", capture)
    monkeypatch.setattr(TrainStep, "_side_stream", staticmethod(contextlib.nullcontext))
    return graphs


def batches(seed=0):
    """(X, Y, reset state?) for 9 steps: carried state, an epoch start, and a short batch
    (from a zero state, as the short last batch of windows is)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for step, rows in enumerate([4, 4, 4, 4, 4, 4, 3, 4, 4]):
        text = torch.randint(0, 11, (rows, 7), generator=g)
        out.append((text[:, :-1], text[:, 1:], step in (0, 5, 6, 7)))
    return out


def run(graphs: bool, cell: str):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=11, cell=cell, hidden=6, layers=2, init_sigma=0.3)).double()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.5)
    step = TrainStep(model, params, clip=1.0, graphs=graphs)
    state, losses, grads = None, [], []
    for X, Y, reset in batches():
        loss, state = step(X, Y, None if reset else state, divisor=float(Y.numel()))
        losses.append(loss.item())
        grads.append([p.grad for p in params])
        optimizer.step()
    return model, losses, grads, state


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_replayed_steps_train_exactly_as_eager_steps(cell, stand_in_graphs):
    eager_model, eager_losses, _, eager_state = run(False, cell)
    model, losses, grads, state = run(True, cell)
    (graph,) = stand_in_graphs
    # steps 1-3 warm up eagerly, step 4 is captured; the short batch (step 7) runs eagerly
    assert graph.replays == 5
    assert losses == pytest.approx(eager_losses, rel=1e-12, abs=0)
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(state, eager_state, rtol=0, atol=1e-12)
    # from the capture on, every step leaves its gradients in the same tensors
    for later in grads[4:]:
        assert all(a is b for a, b in zip(later, grads[3]))


def test_eager_steps_start_from_no_gradients():
    model = build_model(ModelConfig(vocab_size=11, cell="gru", hidden=4))
    params = list(model.parameters())
    step = TrainStep(model, params, clip=1.0)
    X, Y, _ = batches()[0]
    step(X, Y, None, divisor=1.0)
    first = [p.grad.clone() for p in params]
    step(X, Y, None, divisor=1.0)  # the same batch again: the same gradients, not twice them
    for a, p in zip(first, params):
        torch.testing.assert_close(p.grad, a)


def test_a_failed_capture_falls_back_to_eager_steps(monkeypatch):
    def fail(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(TrainStep, "_capture_graph", fail)
    monkeypatch.setattr(TrainStep, "_side_stream", staticmethod(contextlib.nullcontext))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    eager_model, eager_losses, _, _ = run(False, "lstm")
    model, losses, _, _ = run(True, "lstm")
    assert losses == pytest.approx(eager_losses, rel=1e-12, abs=0)
    for a, b in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- clipping


def params_with_grads(scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64)) for shape in ((3, 4), (5,), (2, 2, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64) * scale
    return params


@pytest.mark.parametrize("scale,max_norm", [(10.0, 1.0), (0.01, 1.0), (1.0, 0.5), (3.0, 100.0)])
def test_clip_gradients_equals_torch(scale, max_norm):
    ours, theirs = params_with_grads(scale), params_with_grads(scale)
    norm_ours = clip_gradients(max_norm, ours)
    norm_theirs = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(norm_ours, norm_theirs, rtol=1e-12, atol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=0)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours]))
    assert total.item() <= max_norm * (1 + 1e-9)
    if norm_theirs <= max_norm:  # below the threshold nothing changes
        for a, b in zip(ours, params_with_grads(scale)):
            assert torch.equal(a.grad, b.grad)


def test_clip_gradients_skips_parameters_without_gradients():
    params = params_with_grads(10.0)
    params.append(torch.nn.Parameter(torch.ones(3)))  # no .grad
    reference = params_with_grads(10.0)
    norm = clip_gradients(1.0, params)
    torch.testing.assert_close(norm, torch.nn.utils.clip_grad_norm_(reference, 1.0), rtol=1e-12, atol=0)
    assert params[-1].grad is None
    assert float(clip_gradients(1.0, [torch.nn.Parameter(torch.ones(2))])) == 0.0

