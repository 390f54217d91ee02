"""The GRU cell in torch.nn.GRU's form, gate order (r, z, n): the module (GRUScratch), its
step, then its scan over a sequence with a hand-written backward pass through time.

With ``hh = H_{t-1} @ W_hh + b_hh`` and both ``xp[t]`` and ``hh`` split into (r, z, n):

    R = sigmoid(x_r + h_r);  Z = sigmoid(x_z + h_z);  N = tanh(x_n + R * h_n)
    H_t = (1 - Z) * N + Z * H_{t-1} = N + Z * (H_{t-1} - N)

`step` is these equations after the step's matmul: GRUScratch's step-by-step reference,
its fast inference step, and (through `fused_reference`) what the fused CUDA kernel is
checked against. The scan (`gru_scan`) computes the same function over all T steps into
preallocated buffers; on CUDA it runs the fused kernels instead (FUSED, charrnn/kernels/cuda_fused.py).
What the scans share is in charrnn/cells/scan.py.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from charrnn.kernels import cpu_bfloat16, cpu_matmul, cuda_fused, fast_tanh
from charrnn.cells.base import ScratchCell
from charrnn.cells.scan import (check_shapes, final_grad, float32_recurrence, input_grad, join_input, needs_grad,
                                split_input, weight_grad)

__all__ = ["GRUScratch", "step", "gru_scan", "fused_reference", "fused_backward_reference", "FUSED"]


def step(x: torch.Tensor, hh: torch.Tensor, h: torch.Tensor, tanh=torch.tanh):
    """One step after its matmul. x (B, 3H): the input side xp[t] = [x_r, x_z, x_n]; hh (B,
    3H) = h @ W_hh + b_hh = [h_r, h_z, h_n]; h (B, H): the previous state. Returns the new
    state (B, H) and the gates (R, Z, N), each (B, H). (The sampler passes fast_tanh.tanh.)"""
    H = h.shape[-1]
    RZ = torch.sigmoid(hh[:, : 2 * H] + x[:, : 2 * H])  # reset and update gates, [R, Z]
    R, Z = RZ[:, :H], RZ[:, H:]
    N = tanh(torch.addcmul(x[:, 2 * H :], R, hh[:, 2 * H :]))  # candidate: tanh(x_n + R * h_n)
    return torch.lerp(N, h, Z), (R, Z, N)  # H_t = N + Z * (H_{t-1} - N)


class GRUScratch(ScratchCell):
    """Gated recurrent unit, in PyTorch's (and cuDNN's) form rather than the book's; state H.

    The book applies the reset gate before the hidden product, `tanh(X W_xh + (R * H) W_hh
    + b_h)`; PyTorch applies it after, `tanh(X W_xn + b_xn + R * (H W_hn + b_hn))`. We follow
    PyTorch on purpose: the three hidden products (reset, update, candidate) then become one
    matmul `H @ W_hh`, and weights interoperate with torch.nn.GRU. That is also why the
    hidden side keeps its own bias `b_hh`: the candidate's `b_hn` sits inside `R * (...)`
    and cannot be folded into the input-side bias. Gate blocks are ordered r, z, n.
    """

    gates = 3

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__(num_inputs, num_hiddens, sigma)
        self.b_xh = nn.Parameter(torch.zeros(3 * num_hiddens))  # (3H,)
        self.b_hh = nn.Parameter(torch.zeros(3 * num_hiddens))  # (3H,)

    def input_bias(self):
        return self.b_xh

    def _copy_torch_biases(self, b_ih, b_hh):
        self.b_xh.copy_(b_ih)
        self.b_hh.copy_(b_hh)

    def step(self, xp_t, H):
        H, _ = step(xp_t, torch.addmm(self.b_hh, H, self.W_hh), H)
        return H, H

    def recur(self, xp, state=None):
        H = self.zero_state(xp.shape[1], xp) if state is None else state
        return gru_scan(xp, H, self.recurrent_weight(), self.b_hh)

    def fast_step(self, rows: int):
        mm, b_hh = cpu_matmul.Matmul(self.W_hh, rows), self.b_hh

        def gru_step(x, h):
            h, _ = step(x, mm(h, add=b_hh), h, tanh=fast_tanh.tanh)
            return h, h

        return gru_step


def fused_reference(x: torch.Tensor, hh: torch.Tensor, h: torch.Tensor):
    """What the fused kernel (FUSED.forward) computes: the step, and the
    workspace its backward reads, (B, 5H) = [R, Z, N, h, h_n]."""
    H = h.shape[-1]
    h_new, (R, Z, N) = step(x, hh, h)
    return h_new, torch.cat([R, Z, N, h, hh[:, 2 * H :]], 1)


def fused_backward_reference(dh: torch.Tensor, work: torch.Tensor):
    """The step's backward from that workspace (FUSED.backward): the
    gradients w.r.t. the pre-activations on the input side [dR, dZ, dN] and on the hidden
    side [dR, dZ, R dN], (B, 3H) each, and the part of dH_{t-1} through Z, dH Z."""
    R, Z, N, h, hn = work.chunk(5, 1)
    dZ = dh * (h - N) * Z * (1 - Z)
    dN = dh * (1 - Z) * (1 - N * N)
    dR = dN * hn * R * (1 - R)
    return torch.cat([dR, dZ, dN], 1), torch.cat([dR, dZ, dN * R], 1), dh * Z


def _fused_test_cases(rand, B: int = 3, H: int = 5):
    """The self-test's inputs (see cuda_fused.FusedStep)."""
    args, dh = (rand(B, 3 * H), rand(B, 3 * H), rand(B, H)), rand(B, H)
    return args, lambda want: [(dh, want[1])]


FUSED = cuda_fused.FusedStep(
    # (input gates, hidden gates incl. b_hh, h_prev) -> (h, workspace [R, Z, N, h_prev, h_n])
    forward=lambda ig, hg, hx: torch.ops.aten._thnn_fused_gru_cell(ig, hg, hx),
    # (dH, workspace) -> (d input gates, d hidden gates, the dH_prev part through Z)
    backward=lambda dh, ws: torch.ops.aten._thnn_fused_gru_cell_backward(dh, ws, False)[:3],
    forward_reference=fused_reference, backward_reference=fused_backward_reference, test_cases=_fused_test_cases)


@float32_recurrence
def gru_scan(
    xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU recurrence (the module docstring's equations).

    xp: (T, B, 3H) = X @ W_xh + b_xh, or a Gathered; h0: (B, H); W_hh: (H, 3H); b_hh: (3H,).
    Returns (outputs (T, B, H), hT (B, H)).
    """
    T, _, H = check_shapes(xp, h0, W_hh, 3)
    if b_hh.shape != (3 * H,):
        raise ValueError(f"b_hh must be (3H,) = ({3 * H},), got {tuple(b_hh.shape)}")
    if T == 0:
        return xp.new_empty((0,) + tuple(h0.shape)), h0.clone()
    if needs_grad(xp, h0, W_hh, b_hh):
        src, tokens = split_input(xp)
        return _GRUScan.apply(src, h0, W_hh, b_hh, tokens)
    with torch.no_grad():
        forward = _forward_fused if FUSED.usable(split_input(xp)[0], h0, W_hh) else _forward
        out, _ = forward(xp, h0, W_hh, b_hh, save=False)
        return out, out[-1].clone()


# Saved per step (buffer S of shape (T, B, 4H)): [R, Z, h_n, N], where h_n is the n-part of
# H_{t-1} @ W_hh + b_hh. With BLAS the step's addmm writes [h_r, h_z, h_n] straight into
# S[t][:, :3H] and the sigmoid then overwrites h_r, h_z with R, Z in place.
#
# Backward: the hidden and input sides of the gradient differ only in the n chunk (the
# hidden side has dh_n = R * dN_pre, the input side dN_pre), so they get a buffer each, both
# contiguous, in gate order (r, z, n): Dh (T, B, 3H) = [dR_pre, dZ_pre, dh_n] feeds the
# per-step matmul with W_hh^T and the weight-gradient matmul; Dx (T, B, 3H) = [dR_pre, dZ_pre,
# dN_pre] is the gradient w.r.t. xp (one copy of B x 2H per step; a shared, row-strided
# buffer would cost a copy of the whole of it in each of its three consumers instead).


def _forward(xp, h0, W_hh, b_hh, save: bool):
    """The outputs (T, B, H) and, with save, S (see above); without, one (B, 4H) scratch S row."""
    T, B, G = xp.shape
    H = G // 3
    mm = cpu_matmul.Matmul(W_hh, B, xp, h0, b_hh)
    if mm.onednn:
        b_hh = b_hh.contiguous()
    out = xp.new_empty((T, B, H))
    if save:
        S = xp.new_empty((T, B, 4 * H))
        steps = S.unbind(0)
    else:
        s = xp.new_empty((B, 4 * H))
        steps = (s,) * T
    h = h0
    for x_t, s, o_t in zip(xp.unbind(0), steps, out.unbind(0)):
        hh = mm(h, add=b_hh, out=s[:, : 3 * H])  # [h_r, h_z, h_n]
        rz = s[:, : 2 * H]
        torch.add(hh[:, : 2 * H], x_t[:, : 2 * H], out=rz).sigmoid_()
        hn = s[:, 2 * H : 3 * H]
        if mm.onednn:
            hn.copy_(hh[:, 2 * H :])
        R = s[:, :H]
        Z = s[:, H : 2 * H]
        N = s[:, 3 * H :]
        fast_tanh.tanh_into(torch.addcmul(x_t[:, 2 * H :], R, hn, out=N), out=N)
        torch.lerp(N, h, Z, out=o_t)  # H_t = (1 - Z) * N + Z * H_{t-1} = N + Z * (H_{t-1} - N)
        h = o_t
    return out, (S if save else None)


def _forward_fused(xp, h0, W_hh, b_hh, save: bool):
    """The scan with one fused kernel per step (CUDA): returns the outputs (T, B, H) and, with
    save, each step's workspace (B, 5H)."""
    cell, W = FUSED.forward, cpu_matmul.gemm_operand(W_hh)
    h, outs, works = h0, [], []
    for x_t in xp.unbind(0):
        h, work = cell(x_t, torch.addmm(b_hh, h, W), h)
        outs.append(h)
        if save:
            works.append(work)
    return torch.stack(outs), works


def _backward_fused(h0, W_hh, out, works, g_out, g_hT):
    """Backward of _forward_fused: (Dx, Dh, dh0), Dx and Dh as in _GRUScan.backward."""
    T = out.shape[0]
    cell_backward, W_t = FUSED.backward, cpu_matmul.gemm_operand(W_hh.t())
    gos = g_out.unbind(0) if g_out is not None else None
    dh = final_grad(gos, g_hT, h0)
    Dx, Dh = [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        Dx[t], Dh[t], dh_prev = cell_backward(dh, works[t])
        if t > 0 and gos is not None:
            dh_prev.add_(gos[t - 1])
        dh = dh_prev.addmm_(Dh[t], W_t)
    return torch.stack(Dx), torch.stack(Dh), dh


class _GRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, h0, W_hh, b_hh, tokens):
        ctx.matmul_dtype = cpu_bfloat16.active_dtype()
        ctx.set_materialize_grads(False)
        ctx.fused = FUSED.usable(src, h0, W_hh)
        if ctx.fused:
            out, works = _forward_fused(join_input(src, tokens), h0, W_hh, b_hh, save=True)
            ctx.save_for_backward(h0, W_hh, out, src, tokens, *works)
        else:
            out, S = _forward(join_input(src, tokens), h0, W_hh, b_hh, save=True)
            ctx.save_for_backward(h0, W_hh, out, S, src, tokens)
        return out, out[-1].clone()

    @staticmethod
    @cpu_bfloat16.in_forward_precision
    @once_differentiable
    def backward(ctx, g_out, g_hT):
        need_x, need_h0, need_w, need_b, _ = ctx.needs_input_grad
        if ctx.fused:
            h0, W_hh, out, src, tokens, *works = ctx.saved_tensors
            Dx, Dh, dh = _backward_fused(h0, W_hh, out, works, g_out, g_hT)
            return ((input_grad(Dx, src, tokens) if need_x else None), (dh if need_h0 else None),
                    (weight_grad(h0, out, Dh) if need_w else None), (Dh.sum(dim=(0, 1)) if need_b else None), None)
        h0, W_hh, out, S, src, tokens = ctx.saved_tensors
        T, B, H = out.shape
        mm = cpu_matmul.Matmul(W_hh.t(), B, out)
        # Everything per step, while the step's tiles are in cache (whole-sequence elementwise
        # passes over these tens-of-MB buffers cost more in memory traffic than they save in
        # op calls), in as few ops as the fused ones (addcmul, lerp) allow. Per step, with dH
        # the gradient w.r.t. H_t and H_t - N = Z (H_{t-1} - N):
        #   dN_pre = dH (1-Z)(1-N^2); dZ_pre = dH (H_{t-1}-N) Z(1-Z) = dH (1-Z)(H_t-N);
        #   dh_n = R dN_pre; dR_pre = dN_pre h_n R(1-R) = (dh_n - dh_n R) h_n;
        #   dH_{t-1} = g_out[t-1] + dH Z + [dR_pre, dZ_pre, dh_n] @ W_hh^T.
        Dh = S.new_empty((T, B, 3 * H))  # [dR_pre, dZ_pre, dh_n]
        Dx = S.new_empty((T, B, 3 * H))  # [dR_pre, dZ_pre, dN_pre]
        gos = g_out.unbind(0) if g_out is not None else None
        dh = final_grad(gos, g_hT, h0)
        Ss, Dhs, Dxs, outs = S.unbind(0), Dh.unbind(0), Dx.unbind(0), out.unbind(0)
        scratch = (torch.empty_like(out[0]), torch.empty_like(out[0]))  # (B, H) each: dH_{t-1}, alternately
        tmp = torch.empty_like(out[0])  # (B, H): dH (1-Z)
        for t in range(T - 1, -1, -1):
            s, d, dx = Ss[t], Dhs[t], Dxs[t]
            R, Z, hn, N = s[:, :H], s[:, H : 2 * H], s[:, 2 * H : 3 * H], s[:, 3 * H :]
            dR, dZ, dhn, dNp = d[:, :H], d[:, H : 2 * H], d[:, 2 * H :], dx[:, 2 * H :]
            nxt = scratch[t & 1]  # never aliases dh, which lives in the other one (or elsewhere)
            torch.addcmul(dh, dh, Z, value=-1, out=tmp)  # dH (1-Z)
            if t > 0 and gos is not None:
                torch.addcmul(gos[t - 1], dh, Z, out=nxt)  # g_out[t-1] + dH Z
            else:
                torch.mul(dh, Z, out=nxt)
            torch.mul(tmp, N, out=dNp)
            torch.addcmul(tmp, dNp, N, value=-1, out=dNp)  # dN_pre = dH (1-Z) - dH (1-Z) N N
            torch.sub(outs[t], N, out=dZ)
            dZ.mul_(tmp)  # dZ_pre
            torch.mul(dNp, R, out=dhn)  # dh_n
            torch.addcmul(dhn, dhn, R, value=-1, out=dR)
            dR.mul_(hn)  # dR_pre
            dx[:, : 2 * H].copy_(d[:, : 2 * H])
            dh = mm(d, add=nxt, out=nxt)

        dW = weight_grad(h0, out, Dh) if need_w else None
        db = Dh.sum(dim=(0, 1)) if need_b else None
        return (input_grad(Dx, src, tokens) if need_x else None), (dh if need_h0 else None), dW, db, None
