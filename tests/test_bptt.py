"""Tests of charrnn.bptt: the hand-written backward passes against autograd and torch.nn."""

import os
import subprocess
import sys

import pytest
import torch

from charrnn import bptt
from charrnn.bptt import gru_scan, lstm_scan, rnn_scan

DT = torch.float64


# ----------------------------------------------------------- reference autograd recurrences


def ref_rnn(xp, h0, W_hh):
    h, outs = h0, []
    for x in xp.unbind(0):
        h = torch.tanh(x + h @ W_hh)
        outs.append(h)
    return torch.stack(outs), h


def ref_gru(xp, h0, W_hh, b_hh):
    h, outs = h0, []
    for x in xp.unbind(0):
        xr, xz, xn = x.chunk(3, dim=-1)
        hr, hz, hn = (h @ W_hh + b_hh).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


def ref_lstm(xp, h0, c0, W_hh):
    h, c, outs = h0, c0, []
    for x in xp.unbind(0):
        i, f, g, o = (x + h @ W_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


# name -> (scan, reference, gate count, number of initial states, has b_hh)
CELLS = {
    "rnn": (rnn_scan, ref_rnn, 1, 1, False),
    "gru": (gru_scan, ref_gru, 3, 1, True),
    "lstm": (lstm_scan, ref_lstm, 4, 2, False),
}


def make_inputs(cell, T, B, H, seed=0, requires_grad=True):
    _, _, gates, nstates, has_b = CELLS[cell]
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(T, B, gates * H, generator=g, dtype=DT)
    states = [0.5 * torch.randn(B, H, generator=g, dtype=DT) for _ in range(nstates)]
    W = torch.randn(H, gates * H, generator=g, dtype=DT) / H**0.5
    args = [xp, *states, W]
    if has_b:
        args.append(0.3 * torch.randn(gates * H, generator=g, dtype=DT))
    return [a.requires_grad_(requires_grad) for a in args]


def loss_of(results, weights):
    """A scalar mixing every output (outputs and final states) with fixed random weights;
    weights[k] None means that result gets no gradient."""
    total = 0
    for r, w in zip(results, weights):
        if w is not None:
            total = total + (r * w).sum()
    return total


def loss_weights(results, seed, use_outputs=True, use_final=True):
    g = torch.Generator().manual_seed(seed + 1000)
    ws = []
    for k, r in enumerate(results):
        use = use_outputs if k == 0 else use_final
        ws.append(torch.randn(r.shape, generator=g, dtype=r.dtype) if use else None)
    return ws


@pytest.fixture(params=["plain", "fused"])
def path(request, monkeypatch):
    """Run a test on each path of the scans: the plain ops, and the fused-cell path that CUDA
    takes (here with the kernels' reference functions standing in for them on the CPU)."""
    if request.param == "fused":
        use_fused_cells_on_cpu(monkeypatch)
    return request.param


def use_fused_cells_on_cpu(monkeypatch):
    monkeypatch.setattr(bptt, "_FUSED", dict(bptt._FUSED_REFERENCES))
    monkeypatch.setattr(bptt, "_FUSED_DEVICES", ("cpu",))
    monkeypatch.setattr(bptt, "_fused_state", {})


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


@pytest.fixture(params=["blas", "onednn"])
def gemm(request):
    """Run a test with the scans' matmuls on each backend (oneDNN: CPU float32 only)."""
    if request.param == "onednn" and not bptt._onednn_ok():
        pytest.skip("oneDNN matmul not usable in this torch build")
    prev = bptt.set_gemm_backend(request.param)
    yield request.param
    bptt.set_gemm_backend(prev)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_float32_matches_float64_reference(cell, layout, gemm):
    """float32 results on either matmul backend agree with the float64 reference to float32
    rounding; "strided" feeds a transposed (batch-first) xp, a transposed W_hh view (as
    weight_hh_l0.T is), a non-contiguous h0 and expanded incoming gradients (loss = sum)."""
    scan, ref = CELLS[cell][:2]
    T, B, H = 5, 3, 8
    args64 = [a.detach() for a in make_inputs(cell, T, B, H, seed=7)]
    leaves = [a.float().clone().requires_grad_() for a in args64]
    if layout == "strided":
        xp_bf = args64[0].float().transpose(0, 1).contiguous().requires_grad_()
        W_t = args64[1 + CELLS[cell][3]].float().t().contiguous().requires_grad_()
        h0_wide = torch.cat([args64[1].float(), torch.zeros(B, 2)], 1).requires_grad_()
        leaves[0], leaves[1 + CELLS[cell][3]], leaves[1] = xp_bf, W_t, h0_wide
        inputs = list(leaves)
        inputs[0] = xp_bf.transpose(0, 1)
        inputs[1 + CELLS[cell][3]] = W_t.t()
        inputs[1] = h0_wide[:, :H]
        assert not inputs[0].is_contiguous() and not inputs[1].is_contiguous()
    else:
        inputs = leaves
    ref_args = [a.clone().requires_grad_() for a in args64]
    got = scan(*inputs)
    want = ref(*ref_args)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    if layout == "strided":
        loss, ref_loss = sum(r.sum() for r in got), sum(r.sum() for r in want)
    else:
        ws = loss_weights(want, seed=1)
        loss, ref_loss = loss_of(got, [w.float() for w in ws]), loss_of(want, ws)
    grads = torch.autograd.grad(loss, leaves)
    ref_grads = list(torch.autograd.grad(ref_loss, ref_args))
    if layout == "strided":
        ref_grads[0] = ref_grads[0].transpose(0, 1)
        ref_grads[1 + CELLS[cell][3]] = ref_grads[1 + CELLS[cell][3]].t()
        ref_grads[1] = torch.cat([ref_grads[1], torch.zeros(B, 2, dtype=DT)], 1)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_backends_agree_at_model_size(cell):
    """At a size where "auto" picks oneDNN for the matmuls, it agrees with BLAS (float32)."""
    if not bptt._onednn_ok():
        pytest.skip("oneDNN matmul not usable in this torch build")
    scan = CELLS[cell][0]
    args = [a.detach().float().requires_grad_() for a in make_inputs(cell, 4, 32, 128, seed=11)]
    results = {}
    for backend in ("blas", "auto"):
        prev = bptt.set_gemm_backend(backend)
        try:
            res = scan(*args)
            ws = loss_weights(res, seed=3)
            grads = torch.autograd.grad(loss_of(res, ws), args)
        finally:
            bptt.set_gemm_backend(prev)
        results[backend] = [r.detach() for r in res] + list(grads)
    for a, b in zip(results["blas"], results["auto"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias, gemm):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 6, generator=g, requires_grad=True)
    W = torch.randn(6, 5, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True) if bias else None
    y = bptt.linear(x, W, b)
    want = x @ W + (b if bias else 0)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    gy = torch.randn(y.shape, generator=g)
    leaves = [x, W] + ([b] if bias else [])
    for a, r in zip(torch.autograd.grad(y, leaves, gy), torch.autograd.grad(want, leaves, gy)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(bptt.linear(x, W, b), want, rtol=1e-5, atol=1e-5)


def test_linear_float64_gradcheck():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g, dtype=DT, requires_grad=True) for s in ((2, 3, 4), (4, 5), (5,))]
    assert torch.autograd.gradcheck(bptt.linear, args)


def test_set_gemm_backend_validates():
    with pytest.raises(ValueError):
        bptt.set_gemm_backend("cublas")
    prev = bptt.set_gemm_backend("blas")
    assert bptt.set_gemm_backend(prev) == "blas"


def test_tune_allocator_is_idempotent_and_harmless():
    """In a child process, since it changes malloc settings process-wide."""
    code = (
        "import platform, sys, torch\n"
        "from charrnn import bptt\n"
        "first = bptt.tune_allocator()\n"
        "assert isinstance(first, bool) and bptt.tune_allocator() is first\n"
        "assert first == (sys.platform.startswith('linux') and platform.libc_ver()[0] == 'glibc')\n"
        "xp = torch.randn(64, 32, 4 * 256, requires_grad=True)\n"  # 8 MiB buffers
        "W = (torch.randn(256, 4 * 256) / 16).requires_grad_()\n"
        "for _ in range(2):\n"
        "    out, hT, cT = bptt.lstm_scan(xp, torch.zeros(32, 256), torch.zeros(32, 256), W)\n"
        "    torch.autograd.grad(out.sum() + cT.sum(), [xp, W])\n"
        "print('ok', first)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_shape_errors():
    xp = torch.zeros(2, 3, 8)
    with pytest.raises(ValueError):
        rnn_scan(xp, torch.zeros(3, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError):
        gru_scan(torch.zeros(2, 3, 12), torch.zeros(3, 4), torch.zeros(4, 12), torch.zeros(4))
    with pytest.raises(ValueError):
        lstm_scan(torch.zeros(2, 3, 16), torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(4, 16))


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
def test_float32_fast_path_matches_float64_reference(cell):
    """At a size where the scans take their fast CPU float32 path (tanh as 2 sigmoid(2x) - 1,
    oneDNN matmuls with packed weights when available), results and gradients agree with the
    float64 reference to float32 accuracy."""
    scan, ref = CELLS[cell][:2]
    T, B, H = 6, 32, 96
    assert B * H >= bptt._FAST_TANH_MIN
    args64 = [a.detach() for a in make_inputs(cell, T, B, H, seed=21)]
    leaves = [a.float().requires_grad_() for a in args64]
    ref_args = [a.clone().requires_grad_() for a in args64]
    got, want = scan(*leaves), ref(*ref_args)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=2e-6)
    ws = loss_weights(want, seed=4)
    grads = torch.autograd.grad(loss_of(got, [w.float() for w in ws]), leaves)
    ref_grads = torch.autograd.grad(loss_of(want, ws), ref_args)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_scans_stay_float32_under_autocast(cell):
    """Under autocast (train --amp bf16) the recurrence carries its state in float32,
    half-precision inputs included, and gradients flow back in their dtypes (the CPU's
    bfloat16 matmuls themselves: tests/test_bfloat16.py)."""
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
        return scan(bptt.Gathered(table, tokens), *rest)

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


# ------------------------------------------------------------------------------ fused cells


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_path_runs_one_fused_call_per_step(cell, monkeypatch):
    use_fused_cells_on_cpu(monkeypatch)
    assert bptt._use_fused(torch.zeros(1))  # the self-test, before the counting starts
    calls = {"forward": 0, "backward": 0}

    def counted(name, what):
        fn = bptt._FUSED[name]

        def wrapper(*a):
            calls[what] += 1
            return fn(*a)

        return wrapper

    monkeypatch.setitem(bptt._FUSED, cell, counted(cell, "forward"))
    monkeypatch.setitem(bptt._FUSED, cell + "_backward", counted(cell + "_backward", "backward"))
    args = make_inputs(cell, 7, 2, 3)
    res = CELLS[cell][0](*args)
    loss_of(res, loss_weights(res, seed=0)).backward()
    assert calls == {"forward": 7, "backward": 7}


def test_fused_cells_are_not_used_on_the_cpu():
    assert not bptt._use_fused(torch.zeros(2, 2), torch.zeros(2, 2))


@pytest.mark.parametrize("broken", ["lstm", "gru_backward"])
def test_fused_cells_failing_their_self_test_are_not_used(broken, monkeypatch):
    """A torch release that changed what a fused op computes (here: its workspace layout)
    must send the scans back to the plain ops, not give wrong gradients."""
    use_fused_cells_on_cpu(monkeypatch)
    right = bptt._FUSED[broken]
    monkeypatch.setitem(bptt._FUSED, broken, lambda *a: tuple(t.flip(1) for t in right(*a)))
    assert not bptt._use_fused(torch.zeros(2, 2))
    args = make_inputs("lstm", 4, 2, 3)
    torch.testing.assert_close(lstm_scan(*args)[0], ref_lstm(*args)[0], rtol=0, atol=1e-9)


def test_fused_cells_raising_are_not_used(monkeypatch):
    use_fused_cells_on_cpu(monkeypatch)

    def missing(*a):
        raise RuntimeError("no such op")

    monkeypatch.setitem(bptt._FUSED, "gru", missing)
    assert not bptt._use_fused(torch.zeros(2, 2))


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
