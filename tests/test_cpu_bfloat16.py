"""charrnn/kernels/cpu_bfloat16.py, training with --amp bf16 on a CPU: the scans' and linear()'s matmuls
take bfloat16 operands, everything else (state, gates, weights, gradients' sums) stays float32."""

import tomllib

import pytest
import torch

from charrnn.kernels import cpu_bfloat16, cpu_matmul
from charrnn.cells.gru import gru_scan
from charrnn.cells.lstm import lstm_scan
from charrnn.cells.rnn import rnn_scan

from conftest import TINY

SCANS = {"rnn": (rnn_scan, 1), "gru": (gru_scan, 3), "lstm": (lstm_scan, 4)}


def scan_inputs(cell, T=6, B=4, H=32, seed=0):
    gates = SCANS[cell][1]
    g = torch.Generator().manual_seed(seed)
    xp = torch.randn(T, B, gates * H, generator=g)
    h0 = torch.randn(B, H, generator=g) * 0.5
    W_hh = torch.randn(H, gates * H, generator=g) / H**0.5
    args = [xp, h0, W_hh]
    if cell == "gru":
        args.append(torch.randn(gates * H, generator=g) * 0.1)
    if cell == "lstm":
        args.insert(2, torch.randn(B, H, generator=g) * 0.5)
    return [a.requires_grad_() for a in args]


def outputs_and_grads(cell, args, autocast: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outs = SCANS[cell][0](*args)
    loss = sum((o * torch.linspace(-1, 1, o.shape[-1])).sum() for o in outs)
    return outs, torch.autograd.grad(loss, args)


@pytest.mark.parametrize("cell", SCANS)
def test_scan_under_cpu_autocast_uses_bfloat16_matmuls_and_float32_results(cell):
    args = scan_inputs(cell)
    want, want_grads = outputs_and_grads(cell, args, autocast=False)
    got, got_grads = outputs_and_grads(cell, args, autocast=True)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.03, atol=0.03)
    assert not all(torch.equal(a, b) for a, b in zip(got, want)), "the products were not rounded to bfloat16"
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == torch.float32
        assert (g - w).norm() <= 0.05 * w.norm()  # the backward ran with bfloat16 products too...
    assert not all(torch.equal(g, w) for g, w in zip(got_grads, want_grads))  # ...not in float32


@pytest.mark.parametrize("cell", SCANS)
def test_backward_runs_in_the_precision_of_its_forward(cell):
    """The backward of a bfloat16 forward uses bfloat16 products even though autocast has
    ended by then, and a float32 forward's backward stays float32 inside a bfloat16 block."""
    args = scan_inputs(cell, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = SCANS[cell][0](*args)
    low = torch.autograd.grad(sum(o.sum() for o in outs), args)
    outs = SCANS[cell][0](*args)
    with cpu_bfloat16.matmul_dtype(torch.bfloat16):
        full = torch.autograd.grad(sum(o.sum() for o in outs), args)
    want = torch.autograd.grad(sum(o.sum() for o in SCANS[cell][0](*args)), args)
    for f, w in zip(full, want):
        torch.testing.assert_close(f, w, rtol=0, atol=0)
    assert not all(torch.equal(a, w) for a, w in zip(low, want))


def test_matmul_dtype_is_restored_after_the_block():
    assert cpu_bfloat16.active_dtype() is None
    with pytest.raises(RuntimeError):
        with cpu_bfloat16.matmul_dtype(torch.bfloat16):
            assert cpu_bfloat16.active_dtype() is torch.bfloat16
            raise RuntimeError
    assert cpu_bfloat16.active_dtype() is None


def test_linear_under_cpu_autocast_is_float32_and_close():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 64, generator=g, requires_grad=True)
    W = torch.randn(64, 65, generator=g, requires_grad=True)
    b = torch.randn(65, generator=g, requires_grad=True)
    want = cpu_matmul.linear(x, W, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cpu_matmul.linear(x, W, b)
    assert got.dtype == torch.float32 and got.shape == (2, 5, 65)
    torch.testing.assert_close(got, want, rtol=0.03, atol=0.1)
    assert not torch.equal(got, want)
    got.sum().backward()
    assert x.grad.dtype == W.grad.dtype == torch.float32


def test_a_bfloat16_weight_is_packed_once_for_onednn_unless_blas_is_pinned():
    if not cpu_matmul._packed_low_usable(torch.bfloat16):
        pytest.skip("this torch build's oneDNN has no bfloat16 matmul on this CPU")
    g = torch.Generator().manual_seed(4)
    a, W, add = torch.randn(8, 64, generator=g), torch.randn(64, 96, generator=g), torch.randn(8, 96, generator=g)
    want = add + torch.mm(a.bfloat16(), W.bfloat16()).float()
    with cpu_bfloat16.matmul_dtype(torch.bfloat16):
        packed = cpu_matmul.Matmul(W, 8)
        got = packed(a, add)
        previous = cpu_matmul.set_gemm_backend("blas")
        try:
            plain = cpu_matmul.Matmul(W, 8)
        finally:
            cpu_matmul.set_gemm_backend(previous)
    assert packed.onednn and not plain.onednn and plain.W.dtype == torch.bfloat16
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.01, atol=0.05)  # the same bfloat16 product, rounded alike
    torch.testing.assert_close(plain(a, add), want, rtol=0.01, atol=0.05)


def test_bfloat16_pays_is_false_off_the_cpu():
    assert cpu_bfloat16.bfloat16_pays(torch.device("meta")) is False
    assert isinstance(cpu_bfloat16.bfloat16_pays(torch.device("cpu")), bool)


@pytest.mark.parametrize("amp", ["bf16", "auto"])
def test_training_with_amp_on_the_cpu_records_what_it_ran_with(cli, corpus_file, tmp_path, amp):
    run = tmp_path / "run"
    cli("train", corpus_file, "--cell", "lstm", "--max-steps", "10", "--amp", amp, "--out", run, *TINY).assert_ok()
    recorded = tomllib.loads((run / "config.toml").read_text())["amp"]
    assert recorded in (("bf16",) if amp == "bf16" else ("bf16", "none"))
    cli("train", "--resume", run, "--max-steps", "12", "--quiet").assert_ok()
