"""charrnn/kernels/cuda_fused.py on a CPU, with the kernels' references (the cells' own equations)
standing in for the CUDA kernels: the scans' fused path takes one kernel call per step each
way, gives the plain path's results through the whole model, and a cell's kernels failing
their self-test are not used, while the other cell's still are. (tests/test_cuda.py runs the real kernels on a GPU.)"""

import pytest
import torch

from charrnn.cells.lstm import lstm_scan

from cell_references import CELLS, FUSED, loss_of, loss_weights, make_inputs, ref_lstm, use_fused_cells_on_cpu


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_path_runs_one_fused_call_per_step(cell, monkeypatch):
    use_fused_cells_on_cpu(monkeypatch)
    fused = FUSED[cell]
    assert fused.usable(torch.zeros(1))  # the self-test, before the counting starts
    calls = {"forward": 0, "backward": 0}

    def counted(what):
        fn = getattr(fused, what)

        def wrapper(*a):
            calls[what] += 1
            return fn(*a)

        return wrapper

    monkeypatch.setattr(fused, "forward", counted("forward"))
    monkeypatch.setattr(fused, "backward", counted("backward"))
    args = make_inputs(cell, 7, 2, 3)
    res = CELLS[cell][0](*args)
    loss_of(res, loss_weights(res, seed=0)).backward()
    assert calls == {"forward": 7, "backward": 7}


@pytest.mark.parametrize("cell", FUSED)
def test_fused_cells_are_not_used_on_the_cpu(cell):
    assert not FUSED[cell].usable(torch.zeros(2, 2), torch.zeros(2, 2))


@pytest.mark.parametrize("cell, kernel", [("lstm", "forward"), ("gru", "backward"), ("lstm", "backward")])
def test_a_cell_whose_kernels_fail_their_self_test_runs_plain_and_alone(cell, kernel, monkeypatch):
    """A torch release that changed what a fused op computes (here: its workspace layout)
    must send that cell's scan back to the plain ops, not give wrong gradients, and leave
    the other cell's fused path alone."""
    use_fused_cells_on_cpu(monkeypatch)
    right = getattr(FUSED[cell], kernel)
    monkeypatch.setattr(FUSED[cell], kernel, lambda *a: tuple(t.flip(1) for t in right(*a)))
    assert not FUSED[cell].usable(torch.zeros(2, 2))
    assert all(fused.usable(torch.zeros(2, 2)) for name, fused in FUSED.items() if name != cell)
    args = make_inputs("lstm", 4, 2, 3)
    torch.testing.assert_close(lstm_scan(*args)[0], ref_lstm(*args)[0], rtol=0, atol=1e-9)


def test_fused_cells_raising_are_not_used(monkeypatch):
    use_fused_cells_on_cpu(monkeypatch)

    def missing(*a):
        raise RuntimeError("no such op")

    monkeypatch.setattr(FUSED["gru"], "forward", missing)
    assert not FUSED["gru"].usable(torch.zeros(2, 2))
    assert FUSED["lstm"].usable(torch.zeros(2, 2))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_path_through_the_model(cell, monkeypatch):
    """The language model (first layer gathered from characters, a second layer, the head)
    gives the same loss and gradients on the fused path as on the plain one."""
    from charrnn.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=7, cell=cell, hidden=6, layers=2, init_sigma=0.3)).double()
    X = torch.randint(0, 7, (3, 5))

    def loss_and_grads():
        logits, (s1, s2) = model(X)
        loss = logits.square().mean() + sum(t.sum() for t in ([s2] if cell == "gru" else s2))
        return [loss.detach()] + list(torch.autograd.grad(loss, list(model.parameters())))

    plain = loss_and_grads()
    use_fused_cells_on_cpu(monkeypatch)
    fused = loss_and_grads()
    for a, b in zip(plain, fused):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
