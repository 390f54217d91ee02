"""The Elman RNN cell, ``H_t = tanh(xp[t] + H_{t-1} @ W_hh)`` with ``xp[t] = X_t W_xh + b``:
the module (RNNScratch), its step, then its scan over a sequence with a hand-written
backward pass through time.

`step` is the cell's equation after the step's matmul: RNNScratch's step-by-step reference
and its fast inference step call it. The scan (`rnn_scan`) computes the same function over
all T steps into preallocated buffers; what the scans share is in charrnn/cells/scan.py.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from charrnn.kernels import cpu_bfloat16, cpu_matmul, fast_tanh
from charrnn.cells.base import ScratchCell
from charrnn.cells.scan import (check_shapes, final_grad, float32_recurrence, input_grad, join_input, needs_grad,
                                split_input, weight_grad)

__all__ = ["RNNScratch", "step", "rnn_scan"]


def step(pre: torch.Tensor, tanh=torch.tanh) -> torch.Tensor:
    """One step after its matmul: pre (B, H) = xp[t] + H_{t-1} @ W_hh -> H_t (B, H).
    (The sampler passes fast_tanh.tanh for tanh.)"""
    return tanh(pre)


class RNNScratch(ScratchCell):
    """The book's RNN: `H_t = tanh(X_t W_xh + H_{t-1} W_hh + b_h)`; state H."""

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__(num_inputs, num_hiddens, sigma)
        self.b_h = nn.Parameter(torch.zeros(num_hiddens))  # (H,)

    def input_bias(self):
        return self.b_h

    def _copy_torch_biases(self, b_ih, b_hh):
        self.b_h.copy_(b_ih + b_hh)

    def step(self, xp_t, H):
        H = step(torch.addmm(xp_t, H, self.W_hh))
        return H, H

    def recur(self, xp, state=None):
        H = self.zero_state(xp.shape[1], xp) if state is None else state
        return rnn_scan(xp, H, self.recurrent_weight())

    def fast_step(self, rows: int):
        mm = cpu_matmul.Matmul(self.W_hh, rows)

        def rnn_step(x, h):
            h = step(mm(h, add=x), tanh=fast_tanh.tanh)
            return h, h

        return rnn_step


@float32_recurrence
def rnn_scan(xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elman RNN recurrence ``H_t = tanh(xp[t] + H_{t-1} @ W_hh)``.

    xp: (T, B, H) input projections (biases included), or a Gathered; h0: (B, H); W_hh: (H, H).
    Returns (outputs (T, B, H), hT (B, H)).
    """
    T, _, _ = check_shapes(xp, h0, W_hh, 1)
    if T == 0:
        return xp.new_empty(xp.shape), h0.clone()
    if needs_grad(xp, h0, W_hh):
        src, tokens = split_input(xp)
        return _RNNScan.apply(src, h0, W_hh, tokens)
    with torch.no_grad():
        out = _forward(xp, h0, W_hh)
        return out, out[-1].clone()


def _forward(xp, h0: torch.Tensor, W_hh: torch.Tensor) -> torch.Tensor:
    """The outputs (T, B, H), which are all the backward needs: each step's matmul writes into
    its row of them and the tanh overwrites it in place."""
    T, B, H = xp.shape
    mm = cpu_matmul.Matmul(W_hh, B, xp, h0)
    out = xp.new_empty((T, B, H))
    h = h0
    for x_t, o_t in zip(xp.unbind(0), out.unbind(0)):
        fast_tanh.tanh_into(mm(h, add=x_t, out=o_t), out=o_t)
        h = o_t
    return out


class _RNNScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, h0, W_hh, tokens):
        ctx.matmul_dtype = cpu_bfloat16.active_dtype()
        out = _forward(join_input(src, tokens), h0, W_hh)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h0, W_hh, out, src, tokens)
        return out, out[-1].clone()

    @staticmethod
    @cpu_bfloat16.in_forward_precision
    @once_differentiable
    def backward(ctx, g_out, g_hT):
        h0, W_hh, out, src, tokens = ctx.saved_tensors
        T, B, H = out.shape
        mm = cpu_matmul.Matmul(W_hh.t(), B, out)
        dA = torch.empty_like(out)  # (T, B, H): gradients w.r.t. the pre-activations, = w.r.t. xp
        dAs, outs = dA.unbind(0), out.unbind(0)
        gos = g_out.unbind(0) if g_out is not None else None
        dh = final_grad(gos, g_hT, h0)
        scratch = torch.empty_like(dA[0])  # (B, H): dH_{t-1}
        for t in range(T - 1, -1, -1):
            # dA_t = (1 - H_t^2) dH_t = dH_t - (dH_t H_t) H_t (with no scalar-tensor operand: a
            # 0-dim tensor sends addcmul down a much slower, broadcasting loop)
            dA_t = torch.mul(dh, outs[t], out=dAs[t])
            torch.addcmul(dh, dA_t, outs[t], value=-1, out=dA_t)
            # dH_{t-1} = g_out[t-1] + dA_t @ W_hh^T
            dh = mm(dA_t, add=gos[t - 1] if t > 0 and gos is not None else None, out=scratch)
        need_x, need_h0, need_w, _ = ctx.needs_input_grad
        dW = weight_grad(h0, out, dA) if need_w else None
        return (input_grad(dA, src, tokens) if need_x else None), (dh if need_h0 else None), dW, None
