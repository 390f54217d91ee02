"""The CUDA path: fused cell kernels, CUDA-graph training steps, training, evaluation and
generation on a GPU, each against the CPU or the eager path. Skipped without CUDA (CI has
none); run on a GPU with `pytest tests/test_cuda.py`."""

from __future__ import annotations

import math

import pytest
import torch

from charrnn.kernels import cuda_fused
from charrnn.config import TrainConfig
from charrnn.scoring.evaluation import evaluate
from charrnn.corpus.vocab import Vocab
from charrnn.model import ModelConfig, build_model
from charrnn.generation.sample import generate
from charrnn.training.train import train
from charrnn.training.train_step import TrainStep

from conftest import make_text
from cell_references import CELLS, FUSED, loss_of, loss_weights, make_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(params=["fused", "plain"])
def cuda_path(request, monkeypatch):
    """The scans' CUDA path with the fused cell kernels (the default), and without them."""
    if request.param == "plain":
        monkeypatch.setattr(cuda_fused, "DEVICES", ())
    return request.param


def test_the_fused_cell_kernels_pass_their_self_test():
    assert all(fused.usable(torch.zeros(1, device="cuda")) for fused in FUSED.values())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scans_on_cuda_match_the_cpu(cell, dtype, cuda_path):
    scan, ref = CELLS[cell][:2]
    args = [a.detach().to(dtype).requires_grad_() for a in make_inputs(cell, 9, 5, 16, seed=2)]
    cuda_args = [a.detach().cuda().requires_grad_() for a in args]
    want = ref(*args)
    got = scan(*cuda_args)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, **tol)
    ws = loss_weights(want, seed=1)
    grads = torch.autograd.grad(loss_of(got, [w.cuda() for w in ws]), cuda_args)
    ref_grads = torch.autograd.grad(loss_of(want, ws), args)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.cpu(), b, **tol)


@pytest.mark.parametrize("cell", CELLS)
def test_the_model_on_cuda_matches_the_cpu(cell, cuda_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=13, cell=cell, hidden=24, layers=2, init_sigma=0.2)).double()
    X = torch.randint(0, 13, (6, 11))
    results = []
    for device in ("cpu", "cuda"):
        m = model.to(device)
        m.zero_grad(set_to_none=True)
        logits, _ = m(X.to(device))
        logits.logsumexp(-1).sum().backward()
        # copies: .to() moves a module's tensors in place, so a CPU tensor kept here would move too
        results.append([t.detach().clone().cpu() for t in [logits] + [p.grad for p in m.parameters()]])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_graphed_steps_train_as_eager_steps_on_cuda(cell):
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 17, (8, 21), generator=g).cuda() for _ in range(8)]
    runs = []
    for graphs in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=17, cell=cell, hidden=32, layers=2, init_sigma=0.2)).cuda()
        params = list(model.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-2)
        step = TrainStep(model, params, clip=1.0, graphs=graphs)
        state, losses = None, []
        for i, text in enumerate(batches):
            loss, state = step(text[:, :-1], text[:, 1:], None if i == 5 else state, divisor=float(text[:, 1:].numel()))
            losses.append(loss.item())
            optimizer.step()
        assert step.note is None
        runs.append((losses, [p.detach().cpu() for p in params], step))
    (eager, eager_params, _), (graphed, graphed_params, step) = runs
    assert step.graph is not None
    assert graphed == pytest.approx(eager, rel=1e-5)
    for a, b in zip(graphed_params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_training_on_cuda_with_and_without_graphs(tmp_path, sampling):
    (tmp_path / "c.txt").write_text(make_text(6000))
    summaries = {}
    for graphs in (True, False):
        config = TrainConfig(corpus=str(tmp_path / "c.txt"), out=str(tmp_path / f"run-{graphs}"), cell="lstm",
                             hidden=32, layers=2, batch_size=8, seq_len=16, max_steps=30, eval_every=10,
                             device="cuda", sampling=sampling, cuda_graphs=graphs)
        summaries[graphs] = train(config)
    assert math.isfinite(summaries[True]["val_loss"])
    assert summaries[True]["val_loss"] == pytest.approx(summaries[False]["val_loss"], rel=1e-3)


@pytest.mark.parametrize("graphs", [True, False])
def test_a_resumed_cuda_run_continues_its_dropout_masks(tmp_path, graphs):
    """The CUDA generator is in the checkpoint: resumed, the masks go on (they used to
    start again from step 0, so the split run differed from the straight one)."""
    (tmp_path / "c.txt").write_text(make_text(6000))

    def run(name, max_steps, resume=None):
        config = TrainConfig(corpus=str(tmp_path / "c.txt"), out=str(tmp_path / name), cell="lstm", hidden=32,
                             layers=2, dropout=0.5, batch_size=8, seq_len=16, max_steps=max_steps, eval_every=5,
                             device="cuda", cuda_graphs=graphs)
        train(config, resume=resume)
        return torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]

    straight = run("straight", 10)
    run("split", 5)
    resumed = run("split", 10, resume=tmp_path / "split")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_evaluate_and_generate_on_cuda_match_the_cpu():
    vocab = Vocab("abcdefgh ")
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=len(vocab), cell="gru", hidden=16, init_sigma=0.5))
    ids = torch.randint(0, len(vocab), (500,))
    cpu_eval = evaluate(model, ids, batch_size=4, seq_len=16)
    cpu_text = "".join(c[0] for c in generate(model, vocab, "abc", 50, greedy=True))
    model.cuda()
    gpu_eval = evaluate(model, ids.cuda(), batch_size=4, seq_len=16)
    gpu_text = "".join(c[0] for c in generate(model, vocab, "abc", 50, greedy=True))
    assert gpu_eval[1] == cpu_eval[1] and gpu_eval[0] == pytest.approx(cpu_eval[0], rel=1e-5)
    assert gpu_text == cpu_text
    many = list(generate(model, vocab, "abc", 20, samples=4, seed=1))
    assert len(many) == 20 and all(len(step) == 4 for step in many)


@pytest.mark.parametrize("cell", CELLS)
def test_sampling_replayed_as_a_cuda_graph_matches_eager_sampling(cell, monkeypatch):
    from charrnn.generation.sample import Sampler

    vocab = Vocab("abcdefgh ")
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=len(vocab), cell=cell, hidden=64, layers=2, init_sigma=0.5)).cuda()

    def run(samples):
        return list(generate(model, vocab, "abc", 100, samples=samples, seed=7, top_k=5))

    graphed = [run(1), run(8)]
    monkeypatch.setattr(Sampler, "GRAPH_DEVICES", ())
    assert [run(1), run(8)] == graphed
