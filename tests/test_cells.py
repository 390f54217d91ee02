"""The cells' scans (charrnn/cells/rnn.py, gru.py, lstm.py): values and hand-written
gradients against plain autograd loops and torch.nn, on the plain and the fused-kernel path,
and each cell's `step` as one step of its scan."""

import pytest
import torch

from charrnn.cells import gru as gru_cell, lstm as lstm_cell, rnn as rnn_cell
from charrnn.cells.gru import gru_scan
from charrnn.cells.lstm import lstm_scan
from charrnn.cells.rnn import rnn_scan
from charrnn.cells.scan import Gathered

from cell_references import CELLS, DT, loss_of, loss_weights, make_inputs, ref_lstm, use_fused_cells_on_cpu


@pytest.fixture(params=["plain", "fused"])
def path(request, monkeypatch):
    """Run a test on each path of the scans: the plain ops, and the fused-cell path that CUDA
    takes (here with the kernels' reference functions standing in for them on the CPU)."""
    if request.param == "fused":
        use_fused_cells_on_cpu(monkeypatch)
    return request.param


# ------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("final", [True, False], ids=["with-final", "outputs-only"])
def test_gradcheck(cell, final, path):
    scan = CELLS[cell][0]
    args = make_inputs(cell, 3, 2, 3)

    def f(*a):
        res = scan(*a)
        return res if final else res[0]

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_final_state_only(cell, path):
    scan = CELLS[cell][0]
    args = make_inputs(cell, 3, 2, 3, seed=1)
    assert torch.autograd.gradcheck(lambda *a: scan(*a)[1:], args)


# --------------------------------------------------------------- equality with reference


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B", [(1, 1), (1, 3), (2, 1), (5, 4), (9, 2)])
@pytest.mark.parametrize("mode", ["both", "outputs", "final"])
def test_matches_reference(cell, T, B, mode, path):
    scan, ref = CELLS[cell][:2]
    H = 5
    args = make_inputs(cell, T, B, H, seed=T * 10 + B)
    ref_args = [a.detach().clone().requires_grad_() for a in args]

    got = scan(*args)
    want = ref(*ref_args)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)

    ws = loss_weights(want, seed=T + B, use_outputs=mode != "final", use_final=mode != "outputs")
    grads = torch.autograd.grad(loss_of(got, ws), args)
    ref_grads = torch.autograd.grad(loss_of(want, ws), ref_args)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_lstm_gradient_into_cell_state_only(path):
    args = make_inputs("lstm", 5, 2, 4, seed=9)
    ref_args = [a.detach().clone().requires_grad_() for a in args]
    w = torch.randn(2, 4, dtype=DT)
    grads = torch.autograd.grad((lstm_scan(*args)[2] * w).sum(), args)
    ref_grads = torch.autograd.grad((ref_lstm(*ref_args)[2] * w).sum(), ref_args)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_partial_requires_grad(cell, path):
    """Only some inputs need grad (e.g. frozen weights, or only the weights)."""
    scan, ref = CELLS[cell][:2]
    for k in range(len(make_inputs(cell, 1, 1, 1))):
        args = make_inputs(cell, 4, 3, 4, seed=k, requires_grad=False)
        args[k].requires_grad_()
        ref_args = [a.clone() for a in args]
        ref_args[k] = args[k].detach().clone().requires_grad_()
        got, want = scan(*args), ref(*ref_args)
        ws = loss_weights(want, seed=k)
        (g,) = torch.autograd.grad(loss_of(got, ws), [args[k]])
        (r,) = torch.autograd.grad(loss_of(want, ws), [ref_args[k]])
        torch.testing.assert_close(g, r, rtol=0, atol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_no_grad_paths(cell, path):
    scan, ref = CELLS[cell][:2]
    args = make_inputs(cell, 6, 3, 4, seed=3, requires_grad=False)
    want = ref(*args)
    leaves = [a.clone().requires_grad_() for a in args]
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            got = scan(*leaves)
        for a, b in zip(got, want):
            assert not a.requires_grad
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # and grad mode on but nothing requires grad
    got = scan(*args)
    for a, b in zip(got, want):
        assert a.grad_fn is None
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_retain_graph_backward_twice(cell, path):
    scan = CELLS[cell][0]
    args = make_inputs(cell, 4, 2, 3, seed=5)
    res = scan(*args)
    loss = loss_of(res, loss_weights(res, seed=0))
    g1 = torch.autograd.grad(loss, args, retain_graph=True)
    g2 = torch.autograd.grad(loss, args)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_shape_errors():
    xp = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError):
        rnn_scan(xp, torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError):
        gru_scan(torch.zeros(2, 3, 12), torch.zeros(3, 4), torch.zeros(4, 12), torch.zeros(4))
    with pytest.raises(ValueError):
        lstm_scan(torch.zeros(2, 3, 16), torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(4, 16))


# ----------------------------------------------------------------- the cells' step functions


@pytest.mark.parametrize("cell", CELLS)
def test_each_cells_step_is_one_step_of_its_scan(cell):
    """`step` (what the model's reference loop, the sampler and the fused kernels' self-test
    run) after the step's matmul gives the scan's first step, in values and gradients."""
    args = make_inputs(cell, 1, 3, 4, seed=12)
    xp, h0, W = args[0], args[1], args[1 + CELLS[cell][3]]
    if cell == "rnn":
        got = (rnn_cell.step(torch.addmm(xp[0], h0, W)),)
    elif cell == "gru":
        got = (gru_cell.step(xp[0], torch.addmm(args[3], h0, W), h0)[0],)
    else:
        got = lstm_cell.step(torch.addmm(xp[0], h0, W), args[2])[:2]
    want = CELLS[cell][0](*args)[1:]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    ws = loss_weights(want, seed=6)
    for a, b in zip(torch.autograd.grad(loss_of(got, ws), args), torch.autograd.grad(loss_of(want, ws), args)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ vs torch.nn


@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_nn(cell):
    torch.manual_seed(0)
    T, B, I, H = 7, 3, 5, 6
    mod = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, H).to(DT)
    X = torch.randn(T, B, I, dtype=DT)
    h0 = torch.randn(1, B, H, dtype=DT)
    c0 = torch.randn(1, B, H, dtype=DT)

    # torch.nn reference, with gradients of a loss over outputs and final states
    if cell == "lstm":
        y, (hT, cT) = mod(X, (h0, c0))
        want = (y, hT[0], cT[0])
    else:
        y, hT = mod(X, h0)
        want = (y, hT[0])
    ws = loss_weights(want, seed=2)
    params = [mod.weight_ih_l0, mod.weight_hh_l0, mod.bias_ih_l0, mod.bias_hh_l0]
    want_grads = torch.autograd.grad(loss_of(want, ws), params)

    # the same weights through the scan
    W_xh = mod.weight_ih_l0.detach().T.clone().requires_grad_()
    W_hh = mod.weight_hh_l0.detach().T.clone().requires_grad_()
    b_ih = mod.bias_ih_l0.detach().clone().requires_grad_()
    b_hh = mod.bias_hh_l0.detach().clone().requires_grad_()
    if cell == "gru":
        got = gru_scan(X @ W_xh + b_ih, h0[0], W_hh, b_hh)
    elif cell == "rnn":
        got = rnn_scan(X @ W_xh + (b_ih + b_hh), h0[0], W_hh)
    else:
        got = lstm_scan(X @ W_xh + (b_ih + b_hh), h0[0], c0[0], W_hh)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    gW_xh, gW_hh, gb_ih, gb_hh = torch.autograd.grad(loss_of(got, ws), [W_xh, W_hh, b_ih, b_hh])
    torch.testing.assert_close(gW_xh.T, want_grads[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(gW_hh.T, want_grads[1], rtol=0, atol=1e-9)
    torch.testing.assert_close(gb_ih, want_grads[2], rtol=0, atol=1e-9)
    torch.testing.assert_close(gb_hh, want_grads[3], rtol=0, atol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_scans_stay_float32_under_autocast(cell):
    """Under autocast (train --amp bf16) the recurrence carries its state in float32,
    half-precision inputs included, and gradients flow back in their dtypes (the CPU's
    bfloat16 matmuls themselves: tests/test_cpu_bfloat16.py)."""
    scan = CELLS[cell][0]
    args = [a.detach().float().requires_grad_() for a in make_inputs(cell, 4, 3, 8, seed=2)]
    want = scan(*args)
    xp_half = args[0].detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = scan(xp_half, *args[1:])
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02)
    (g,) = torch.autograd.grad(sum(r.sum() for r in got), [xp_half])
    assert g.dtype == torch.bfloat16


@pytest.mark.parametrize("cell", CELLS)
def test_gathered_input_is_the_gathered_xp(cell):
    """A Gathered(table, tokens) input gives the scan's results for xp = table[tokens], and
    its gradient for the table is xp's gradient added up per token (gradcheck in float64)."""
    scan, _, gates, _, _ = CELLS[cell]
    T, B, H, V = 4, 3, 3, 5
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(0, V, (B, T), generator=g).T  # (T, B), strided as the model's X.T is
    table = torch.randn(V, gates * H, generator=g, dtype=DT, requires_grad=True)
    rest = make_inputs(cell, T, B, H, seed=6)[1:]

    def via_gathered(table, *rest):
        return scan(Gathered(table, tokens), *rest)

    def via_xp(table, *rest):
        return scan(table[tokens], *rest)

    assert torch.autograd.gradcheck(via_gathered, [table, *rest])
    got, want = via_gathered(table, *rest), via_xp(table, *rest)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    ws = loss_weights(want, seed=3)
    leaves = [table, *rest]
    for a, b in zip(torch.autograd.grad(loss_of(got, ws), leaves), torch.autograd.grad(loss_of(want, ws), leaves)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    with torch.no_grad():
        for a, b in zip(via_gathered(table, *rest), want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
