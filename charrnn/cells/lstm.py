"""The LSTM cell, gate order (i, f, g, o) as in torch.nn.LSTM: the module (LSTMScratch), its
step, then its scan over a sequence with a hand-written backward pass through time.

With ``[i, f, g, o] = xp[t] + H_{t-1} @ W_hh`` (xp includes all biases):

    I, F, O = sigmoid(i, f, o);  G = tanh(g)
    C_t = F * C_{t-1} + I * G;   H_t = O * tanh(C_t)

`step` is these equations after the step's matmul: LSTMScratch's step-by-step reference,
its fast inference step, and (through `fused_reference`) what the fused CUDA kernel is
checked against. The scan (`lstm_scan`) computes the same function over all T steps into
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

__all__ = ["LSTMScratch", "step", "lstm_scan", "fused_reference", "fused_backward_reference", "FUSED"]


def step(gates: torch.Tensor, c: torch.Tensor, tanh=torch.tanh):
    """One step after its matmul. gates (B, 4H) = xp[t] + h @ W_hh, the pre-activations [i,
    f, g, o]; c (B, H): the previous memory cell. Returns the new h and c (B, H) and the
    gates (I, F, G, O), each (B, H). (The sampler passes fast_tanh.tanh.)"""
    H = c.shape[-1]
    IF = torch.sigmoid(gates[:, : 2 * H])  # input and forget gates, [I, F]
    G = tanh(gates[:, 2 * H : 3 * H])  # candidate memory cell
    O = torch.sigmoid(gates[:, 3 * H :])  # output gate
    I, F = IF[:, :H], IF[:, H:]
    c = torch.addcmul(F * c, I, G)  # C_t = F * C_{t-1} + I * G
    return O * tanh(c), c, (I, F, G, O)  # H_t = O * tanh(C_t)


class LSTMScratch(ScratchCell):
    """Long short-term memory; state `(H, C)`. Gate blocks are ordered i, f, g, o as in
    torch.nn.LSTM, with one bias per gate (PyTorch's two biases add up to it)."""

    gates = 4
    state_parts = ("h", "c")

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__(num_inputs, num_hiddens, sigma)
        self.b_h = nn.Parameter(torch.zeros(4 * num_hiddens))  # (4H,)

    def input_bias(self):
        return self.b_h

    def init_biases(self, forget_bias: float) -> None:
        """The forget gate's bias at forget_bias (1 keeps the memory early on)."""
        H = self.num_hiddens
        self.b_h[H : 2 * H] = forget_bias

    def _copy_torch_biases(self, b_ih, b_hh):
        self.b_h.copy_(b_ih + b_hh)

    def step(self, xp_t, state):
        H, C = state
        H, C, _ = step(torch.addmm(xp_t, H, self.W_hh), C)
        return H, (H, C)

    def recur(self, xp, state=None):
        H, C = self.zero_state(xp.shape[1], xp) if state is None else state
        outputs, H, C = lstm_scan(xp, H, C, self.recurrent_weight())
        return outputs, (H, C)

    def fast_step(self, rows: int):
        mm = cpu_matmul.Matmul(self.W_hh, rows)

        def lstm_step(x, state):
            h, c, _ = step(mm(state[0], add=x), state[1], tanh=fast_tanh.tanh)
            return h, (h, c)

        return lstm_step


def fused_reference(ig: torch.Tensor, hg: torch.Tensor, c: torch.Tensor):
    """What the fused kernel (FUSED.forward) computes from the input and hidden
    sides' gates: the step, and the workspace its backward reads, (B, 4H) = [I, F, G, O]."""
    h, c, gates = step(ig + hg, c)
    return h, c, torch.cat(gates, 1)


def fused_backward_reference(dh: torch.Tensor, dc: torch.Tensor | None, c_prev: torch.Tensor, c: torch.Tensor,
                             work: torch.Tensor):
    """The step's backward (FUSED.backward), from dH and the gradient dC
    from above (None: zero): the gradients w.r.t. the pre-activations [dI, dF, dG, dO] (B, 4H)
    and dC_{t-1}."""
    I, F, G, O = work.chunk(4, 1)
    tc = c.tanh()
    dC = dh * O * (1 - tc * tc) + (0 if dc is None else dc)
    d = torch.cat([dC * G * I * (1 - I), dC * c_prev * F * (1 - F), dC * I * (1 - G * G), dh * tc * O * (1 - O)], 1)
    return d, dC * F


def _fused_test_cases(rand, B: int = 3, H: int = 5):
    """The self-test's inputs (see cuda_fused.FusedStep): the backward with and without a
    gradient from above for C."""
    args, dh, dc = (rand(B, 4 * H), rand(B, 4 * H), rand(B, H)), rand(B, H), rand(B, H)
    return args, lambda want: [(dh, dc, args[2], want[1], want[2]), (dh, None, args[2], want[1], want[2])]


FUSED = cuda_fused.FusedStep(
    # (input gates, hidden gates, c_prev) -> (h, c, workspace [I, F, G, O])
    forward=lambda ig, hg, cx: torch.ops.aten._thnn_fused_lstm_cell(ig, hg, cx),
    # (dH, dC from above or None, c_prev, c, workspace) -> (d gates pre-activation, dC_prev)
    backward=lambda dh, dc, cx, cy, ws: torch.ops.aten._thnn_fused_lstm_cell_backward_impl(dh, dc, cx, cy, ws,
                                                                                          False)[:2],
    forward_reference=fused_reference, backward_reference=fused_backward_reference, test_cases=_fused_test_cases)


@float32_recurrence
def lstm_scan(
    xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, W_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSTM recurrence (the module docstring's equations).

    xp: (T, B, 4H) input projections including ALL biases, or a Gathered; h0, c0: (B, H);
    W_hh: (H, 4H). Returns (outputs (T, B, H), hT, cT).
    """
    T, _, _ = check_shapes(xp, h0, W_hh, 4)
    if c0.shape != h0.shape:
        raise ValueError(f"c0 must have h0's shape {tuple(h0.shape)}, got {tuple(c0.shape)}")
    if T == 0:
        return xp.new_empty((0,) + tuple(h0.shape)), h0.clone(), c0.clone()
    if needs_grad(xp, h0, c0, W_hh):
        src, tokens = split_input(xp)
        return _LSTMScan.apply(src, h0, c0, W_hh, tokens)
    with torch.no_grad():
        if FUSED.usable(split_input(xp)[0], h0, c0, W_hh):
            out, cT, _, _ = _forward_fused(xp, h0, c0, W_hh, save=False)
            return out, out[-1].clone(), cT.clone()
        out, _, cT, _ = _forward(xp, h0, c0, W_hh, save=False)
        return out, out[-1].clone(), cT.clone()


# Saved: gate activations A (T, B, 4H) = [I, F, G, O] (the activations write straight into A
# from the step's matmul result; with BLAS that result already is A[t], so in place), cells
# C (T, B, H) and tanh(C) (T, B, H). Backward buffer D (T, B, 4H) = [dI, dF, dG, dO]
# pre-activation gradients, which is also the gradient w.r.t. xp.


def _block_steps(X: torch.Tensor, parts: int) -> list:
    """Per-step views of the equal column blocks of X (T, B, parts*H): parts tuples of T
    (B, H) views, made in a few C++ calls instead of slicing in Python at every step."""
    T, B, G = X.shape
    blocks = X.view(T, B, parts, G // parts)
    return [blocks[:, :, k].unbind(0) for k in range(parts)]


def _forward(xp, h0, c0, W_hh, save: bool):
    """The outputs (T, B, H), and with save A, C, TC (see above); without, the last cell state
    (and one (B, 4H) scratch row of A)."""
    T, B, G4 = xp.shape
    H = G4 // 4
    mm = cpu_matmul.Matmul(W_hh, B, xp, h0, c0)
    out = xp.new_empty((T, B, H))
    if save:
        A = xp.new_empty((T, B, 4 * H))
        C = xp.new_empty((T, B, H))
        TC = xp.new_empty((T, B, H))
        a_steps, c_steps, tc_steps = A.unbind(0), C.unbind(0), TC.unbind(0)
        Is, Fs, Gs, Os = _block_steps(A, 4)
    else:
        a = xp.new_empty((B, 4 * H))
        tc = xp.new_empty((B, H))
        cbufs = (xp.new_empty((B, H)), xp.new_empty((B, H)))  # C_t, alternately
        a_steps, tc_steps = (a,) * T, (tc,) * T
        c_steps = tuple(cbufs[t & 1] for t in range(T))
        Is, Fs, Gs, Os = ((chunk,) * T for chunk in a.view(B, 4, H).unbind(1))
    # the gates: sigmoid for i, f, o and tanh for g; on the fast path one sigmoid over all
    # four blocks, with g doubled before and 2 s - 1 after (tanh(g) = 2 sigmoid(2g) - 1)
    fast = fast_tanh.applies(tc_steps[0])
    h, c = h0, c0
    for x_t, a, c_t, tc, o_t, I, F, Gt, O in zip(xp.unbind(0), a_steps, c_steps, tc_steps, out.unbind(0),
                                                 Is, Fs, Gs, Os):
        g = mm(h, add=x_t, out=a)  # [i, f, g, o]
        if fast:
            gg = g[:, 2 * H : 3 * H]
            gg.add_(gg)
            torch.sigmoid(g, out=a)
            Gt.add_(Gt).sub_(1)
        else:
            torch.sigmoid(g[:, : 2 * H], out=a[:, : 2 * H])
            torch.tanh(g[:, 2 * H : 3 * H], out=Gt)
            torch.sigmoid(g[:, 3 * H :], out=O)
        torch.mul(F, c, out=c_t)
        c_t.addcmul_(I, Gt)
        fast_tanh.tanh_into(c_t, out=tc)
        torch.mul(O, tc, out=o_t)
        h, c = o_t, c_t
    if save:
        return out, A, C, TC
    return out, None, c, None


def _forward_fused(xp, h0, c0, W_hh, save: bool):
    """The scan with one fused kernel per step (CUDA): returns the outputs (T, B, H), the last
    cell state and, with save, each step's cell state (B, H) and workspace (B, 4H)."""
    cell, W = FUSED.forward, cpu_matmul.gemm_operand(W_hh)
    h, c, outs, cells, works = h0, c0, [], [], []
    for x_t in xp.unbind(0):
        h, c, work = cell(x_t, torch.mm(h, W), c)
        outs.append(h)
        if save:
            cells.append(c)
            works.append(work)
    return torch.stack(outs), c, cells, works


def _backward_fused(h0, c0, W_hh, cells, works, g_out, g_hT, g_cT):
    """Backward of _forward_fused: (D, dh0, dc0), D as in _LSTMScan.backward."""
    T = len(cells)
    cell_backward, W_t = FUSED.backward, cpu_matmul.gemm_operand(W_hh.t())
    gos = g_out.unbind(0) if g_out is not None else None
    dh, dc = final_grad(gos, g_hT, h0), g_cT
    D = [None] * T
    for t in range(T - 1, -1, -1):
        D[t], dc = cell_backward(dh, dc, cells[t - 1] if t else c0, cells[t], works[t])
        dh = torch.addmm(gos[t - 1], D[t], W_t) if t > 0 and gos is not None else torch.mm(D[t], W_t)
    return torch.stack(D), dh, dc


class _LSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, h0, c0, W_hh, tokens):
        ctx.matmul_dtype = cpu_bfloat16.active_dtype()
        ctx.set_materialize_grads(False)
        ctx.fused = FUSED.usable(src, h0, c0, W_hh)
        if ctx.fused:
            out, cT, cells, works = _forward_fused(join_input(src, tokens), h0, c0, W_hh, save=True)
            ctx.save_for_backward(h0, c0, W_hh, out, src, tokens, *cells, *works)
            return out, out[-1].clone(), cT.clone()
        out, A, C, TC = _forward(join_input(src, tokens), h0, c0, W_hh, save=True)
        ctx.save_for_backward(h0, c0, W_hh, out, A, C, TC, src, tokens)
        return out, out[-1].clone(), C[-1].clone()

    @staticmethod
    @cpu_bfloat16.in_forward_precision
    @once_differentiable
    def backward(ctx, g_out, g_hT, g_cT):
        need_x, need_h0, need_c0, need_w, _ = ctx.needs_input_grad
        if ctx.fused:
            h0, c0, W_hh, out, src, tokens, *rest = ctx.saved_tensors
            T = out.shape[0]
            D, dh, dc = _backward_fused(h0, c0, W_hh, rest[:T], rest[T:], g_out, g_hT, g_cT)
            return ((input_grad(D, src, tokens) if need_x else None), (dh if need_h0 else None),
                    (dc if need_c0 else None), (weight_grad(h0, out, D) if need_w else None), None)
        h0, c0, W_hh, out, A, C, TC, src, tokens = ctx.saved_tensors
        T, B, H = out.shape
        mm = cpu_matmul.Matmul(W_hh.t(), B, out)
        # Per step (everything while the step's tiles are in cache, as in the GRU), with dH,
        # dC_carry the gradients from above, and H_t = O tanh(C), U = I G:
        #   dC = dC_carry + dH O (1 - tanh(C)^2) = dC_carry + dH (O - H_t tanh(C));
        #   dO_pre = dH tanh(C) O(1-O) = dH (H_t - H_t O);
        #   dI_pre = dC G I(1-I) = dC (U - U I);  dG_pre = dC I (1-G^2) = dC (I - U G);
        #   dF_pre = dC Cprev F(1-F);  dC_carry' = dC F;
        #   dH_{t-1} = g_out[t-1] + [dI, dF, dG, dO] @ W_hh^T.
        D = A.new_empty((T, B, 4 * H))  # [dI, dF, dG, dO] pre-activation gradients
        gos = g_out.unbind(0) if g_out is not None else (None,) * T
        dh = final_grad(None if g_out is None else gos, g_hT, h0)
        dc_carry = g_cT if g_cT is not None else torch.zeros_like(c0)
        # per-step views, made once (see _block_steps): step t reads cprevs[t], adds ahead[t]
        Is, Fs, Gs, Os = _block_steps(A, 4)
        dIs, dFs, dGs, dOs = _block_steps(D, 4)
        dIFGs = D[..., : 3 * H].view(T, B, 3, H).unbind(0)
        cprevs = (c0,) + C.unbind(0)[:-1]
        ahead = (None,) + gos[:-1]
        dc = torch.empty_like(out[0])  # (B, H): dC
        dc3 = dc.unsqueeze(1)
        tmp = torch.empty_like(out[0])  # (B, H): O - H_t tanh(C), then U
        carry = (torch.empty_like(out[0]), torch.empty_like(out[0]))  # (B, H) each: dC_carry, alternately
        dh_buf = torch.empty_like(out[0])  # (B, H): dH_{t-1}
        Ds, TCs, outs = D.unbind(0), TC.unbind(0), out.unbind(0)
        for t in range(T - 1, -1, -1):
            I, F, Gt, O, dI, dF, dG, dO = Is[t], Fs[t], Gs[t], Os[t], dIs[t], dFs[t], dGs[t], dOs[t]
            h_t, tc = outs[t], TCs[t]
            torch.addcmul(O, h_t, tc, value=-1, out=tmp)
            torch.addcmul(dc_carry, dh, tmp, out=dc)  # dC
            torch.addcmul(h_t, h_t, O, value=-1, out=dO)
            dO.mul_(dh)  # dO_pre
            torch.mul(I, Gt, out=tmp)  # U
            torch.addcmul(tmp, tmp, I, value=-1, out=dI)
            torch.addcmul(I, tmp, Gt, value=-1, out=dG)
            torch.addcmul(F, F, F, value=-1, out=dF)
            dF.mul_(cprevs[t])
            dIFGs[t].mul_(dc3)  # dI_pre, dF_pre, dG_pre
            dc_carry = torch.mul(dc, F, out=carry[t & 1])
            dh = mm(Ds[t], add=ahead[t], out=dh_buf)

        dW = weight_grad(h0, out, D) if need_w else None
        return ((input_grad(D, src, tokens) if need_x else None), (dh if need_h0 else None),
                (dc_carry if need_c0 else None), dW, None)
