"""What the scan tests share: each cell's recurrence written as a plain autograd loop (an
independent statement of the equations, on purpose not the cell files' own `step`), the
inputs and losses to compare them on, and the switch that runs the fused-kernel path on a
CPU. Used by test_cells.py, test_cpu_matmul.py, test_cuda_fused.py and test_cuda.py."""

import torch

from charrnn.kernels import cuda_fused
from charrnn.cells import gru, lstm
from charrnn.cells.gru import gru_scan
from charrnn.cells.lstm import lstm_scan
from charrnn.cells.rnn import rnn_scan

DT = torch.float64


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
    """A scan's arguments, float64: [xp, h0 (, c0), W_hh (, b_hh)]."""
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


FUSED = {"gru": gru.FUSED, "lstm": lstm.FUSED}  # the cells with fused CUDA kernels


def use_fused_cells_on_cpu(monkeypatch):
    """The scans' fused-kernel path (CUDA's) on the CPU, with the kernels' references
    standing in for the kernels."""
    monkeypatch.setattr(cuda_fused, "DEVICES", ("cpu",))
    for fused in FUSED.values():
        monkeypatch.setattr(fused, "forward", fused.forward_reference)
        monkeypatch.setattr(fused, "backward", fused.backward_reference)
        monkeypatch.setattr(fused, "self_test_passed", {})
