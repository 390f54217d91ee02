"""PyTorch's fused CUDA kernels for one GRU or LSTM step, which the scans use on a GPU.

On a GPU every small elementwise op is a kernel launch of its own, a few microseconds of
host time however little it computes: a gated step is ~8 such ops forward and ~13 backward
around its one matmul, so at the sizes people train the host, not the GPU, sets the pace.
PyTorch ships the fused CUDA kernels that torch.nn.LSTMCell and GRUCell use (the private ops
aten::_thnn_fused_lstm_cell, _thnn_fused_gru_cell and their backwards): each does a whole
step's gates, new state and what the backward needs in one launch, in our cells' gate order
and form. On CUDA the GRU and LSTM scans use them, one matmul and one fused kernel per step
each way, once a self-test at first use has checked them against the cells' own equations
(`fused_reference` and `fused_backward_reference` in gru_cell.py and lstm_cell.py, which also
say how each kernel's workspace is laid out); elsewhere, or if the test fails, the scans run
their plain operations.
"""

from __future__ import annotations

import torch

__all__ = ["KERNELS", "DEVICES", "kernel", "usable", "references"]

KERNELS = {
    # (input gates, hidden gates, c_prev) -> (h, c, workspace [I, F, G, O])
    "lstm": lambda ig, hg, cx: torch.ops.aten._thnn_fused_lstm_cell(ig, hg, cx),
    # (dH, dC from above or None, c_prev, c, workspace) -> (d gates pre-activation, dC_prev)
    "lstm_backward": lambda dh, dc, cx, cy, ws: torch.ops.aten._thnn_fused_lstm_cell_backward_impl(
        dh, dc, cx, cy, ws, False)[:2],
    # (input gates, hidden gates incl. b_hh, h_prev) -> (h, workspace [R, Z, N, h_prev, h_n])
    "gru": lambda ig, hg, hx: torch.ops.aten._thnn_fused_gru_cell(ig, hg, hx),
    # (dH, workspace) -> (d input gates, d hidden gates, the dH_prev part through Z)
    "gru_backward": lambda dh, ws: torch.ops.aten._thnn_fused_gru_cell_backward(dh, ws, False)[:3],
}
DEVICES = ("cuda",)  # device types whose scans use the kernels
self_test_passed: dict[str, bool] = {}  # device type -> result of the one-time self-test


def kernel(name: str):
    """The fused op for a cell's step ("gru", "lstm") or its backward ("gru_backward", "lstm_backward")."""
    return KERNELS[name]


def usable(*tensors: torch.Tensor) -> bool:
    """Whether a scan over these tensors uses the fused kernels."""
    device = tensors[0].device
    if device.type not in DEVICES or any(t.dtype not in (torch.float32, torch.float64) for t in tensors):
        return False
    if device.type not in self_test_passed:
        self_test_passed[device.type] = _self_test(device)
    return self_test_passed[device.type]


def references() -> dict:
    """What each kernel computes, in plain operations: the cells' own step functions (keys as KERNELS)."""
    from charrnn import gru_cell, lstm_cell  # here, not at the top: those modules import this one

    return {"lstm": lstm_cell.fused_reference, "lstm_backward": lstm_cell.fused_backward_reference,
            "gru": gru_cell.fused_reference, "gru_backward": gru_cell.fused_backward_reference}


def _self_test(device: torch.device) -> bool:
    """Every kernel against its reference on small random inputs (the LSTM's backward with
    and without a gradient from above for C)."""
    try:
        refs = references()
        g = torch.Generator().manual_seed(0)
        B, H = 3, 5

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(device)

        cases = [("lstm", (rand(B, 4 * H), rand(B, 4 * H), rand(B, H))),
                 ("gru", (rand(B, 3 * H), rand(B, 3 * H), rand(B, H)))]
        dh, dc = rand(B, H), rand(B, H)
        with torch.no_grad():
            for name, args in cases:
                got, want = kernel(name)(*args), refs[name](*args)
                if name == "lstm":
                    back = (dh, dc, args[2], want[1], want[2])
                    cases_back = [back, (dh, None, *back[2:])]
                else:
                    cases_back = [(dh, want[1])]
                pairs = list(zip(got, want))
                for b in cases_back:
                    pairs += zip(kernel(name + "_backward")(*b), refs[name + "_backward"](*b))
                if not all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in pairs):
                    return False
        return True
    except Exception:  # missing op, changed signature or workspace layout, ...
        return False
