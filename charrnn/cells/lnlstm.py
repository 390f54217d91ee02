"""The layer-normalised LSTM of Ba, Kiros and Hinton ("Layer Normalization", 2016, section
6.3 and its LSTM equations): the module (LNLSTMScratch), its step, then its scan over a
sequence with a hand-written backward pass through time. Gate order (i, f, g, o) as in
lstm.py.

With LN(v) = (v - mean(v)) / sqrt(var(v) + eps) over one row's features, and the gains
g_x, g_h (4H) and g_c, b_c (H):

    xp[t] = g_x * LN(X_t @ W_xh) + b       (the input side: all steps in one matmul first)
    [i, f, g, o] = xp[t] + g_h * LN(H_{t-1} @ W_hh)
    I, F, O = sigmoid(i, f, o);  G = tanh(g)
    C_t = F * C_{t-1} + I * G;   H_t = O * tanh(g_c * LN(C_t) + b_c)

Each side of the gates is normalised on its own, so neither can drown the other, and the
memory cell is normalised before its tanh. The paper gives each normalisation a bias as
well; the input and recurrent sides' biases only add to the gates, so one bias b (4H) is
all of them (the same function, fewer parameters). `step` is these equations after the
step's matmul under autograd: LNLSTMScratch's step-by-step reference `loop`, which the scan
(`lnlstm_scan`) is tested against; the fast inference step calls it too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from charrnn.kernels import cpu_bfloat16, cpu_matmul, fast_tanh
from charrnn.cells.base import ScratchCell
from charrnn.cells.scan import (check_shapes, final_grad, float32_recurrence, input_grad, join_input, needs_grad,
                                split_input, weight_grad)

__all__ = ["LNLSTMScratch", "step", "lnlstm_scan"]

EPS = 1e-5  # added to the variance, as torch.nn.LayerNorm does


def normalized(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LN(v) over the last dimension, and 1 / sqrt(var + eps) (..., 1), which its backward needs."""
    var, mu = torch.var_mean(v, -1, unbiased=False, keepdim=True)
    r = torch.rsqrt(var + EPS)
    return (v - mu) * r, r


def normalized_backward(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The gradient w.r.t. v from dy, the gradient w.r.t. y = LN(v), and r (see normalized)."""
    return r * (dy - dy.mean(-1, keepdim=True) - y * (dy * y).mean(-1, keepdim=True))


def step(xp_t, hh, c, g_h, g_c, b_c, tanh=torch.tanh):
    """One step after its matmul: xp_t (B, 4H) the input side, hh (B, 4H) = H_{t-1} @ W_hh,
    c (B, H) the previous memory cell -> the new H and C (B, H)."""
    H = c.shape[-1]
    z = xp_t + g_h * normalized(hh)[0]  # [i, f, g, o]
    IF = torch.sigmoid(z[:, : 2 * H])
    G = tanh(z[:, 2 * H : 3 * H])
    O = torch.sigmoid(z[:, 3 * H :])
    c = IF[:, H:] * c + IF[:, :H] * G
    return O * tanh(g_c * normalized(c)[0] + b_c), c


class LNLSTMScratch(ScratchCell):
    """The layer-normalised LSTM; state `(H, C)`. Parameters beyond W_xh, W_hh: the gate
    bias b_h (4H), the gains g_x and g_h (4H) of the input and recurrent sides, and the
    memory cell's normalisation g_c, b_c (H)."""

    gates = 4
    state_parts = ("h", "c")

    def __init__(self, num_inputs: int, num_hiddens: int, sigma: float = 0.01):
        super().__init__(num_inputs, num_hiddens, sigma)
        self.b_h = nn.Parameter(torch.zeros(4 * num_hiddens))  # (4H,)
        self.g_x = nn.Parameter(torch.ones(4 * num_hiddens))  # (4H,)
        self.g_h = nn.Parameter(torch.ones(4 * num_hiddens))  # (4H,)
        self.g_c = nn.Parameter(torch.ones(num_hiddens))  # (H,)
        self.b_c = nn.Parameter(torch.zeros(num_hiddens))  # (H,)

    def input_bias(self):
        return self.b_h

    def init_biases(self, forget_bias: float) -> None:
        """The forget gate's bias at forget_bias, as the LSTM's; the gains start at 1."""
        H = self.num_hiddens
        self.b_h[H : 2 * H] = forget_bias

    def _input_side(self, products: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(products, (products.shape[-1],), self.g_x, self.b_h, EPS)

    def project(self, inputs):
        return self._input_side(cpu_matmul.linear(inputs, self.W_xh))

    def input_table(self, E=None):
        return self._input_side(self.W_xh if E is None else E @ self.W_xh)

    def step(self, xp_t, state):
        H, C = state
        H, C = step(xp_t, H @ self.W_hh, C, self.g_h, self.g_c, self.b_c)
        return H, (H, C)

    def recur(self, xp, state=None):
        H, C = self.zero_state(xp.shape[1], xp) if state is None else state
        outputs, H, C = lnlstm_scan(xp, H, C, self.recurrent_weight(), self.g_h, self.g_c, self.b_c)
        return outputs, (H, C)

    def fast_input(self, rows: int):
        mm = cpu_matmul.Matmul(self.W_xh, rows)
        return lambda x: self._input_side(mm(x))

    def fast_step(self, rows: int):
        mm = cpu_matmul.Matmul(self.W_hh, rows)

        def lnlstm_step(x, state):
            h, c = step(x, mm(state[0]), state[1], self.g_h, self.g_c, self.b_c, tanh=fast_tanh.tanh)
            return h, (h, c)

        return lnlstm_step


@float32_recurrence
def lnlstm_scan(xp, h0: torch.Tensor, c0: torch.Tensor, W_hh: torch.Tensor, g_h: torch.Tensor, g_c: torch.Tensor,
                b_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recurrence (the module docstring's equations).

    xp: (T, B, 4H) the input side, LN, gain and bias included, or a Gathered; h0, c0: (B, H);
    W_hh: (H, 4H); g_h: (4H,); g_c, b_c: (H,). Returns (outputs (T, B, H), hT, cT).
    """
    T, _, H = check_shapes(xp, h0, W_hh, 4)
    if c0.shape != h0.shape:
        raise ValueError(f"c0 must have h0's shape {tuple(h0.shape)}, got {tuple(c0.shape)}")
    if g_h.shape != (4 * H,) or g_c.shape != (H,) or b_c.shape != (H,):
        raise ValueError(f"g_h must be (4H,), g_c and b_c (H,) with H = {H}; got {tuple(g_h.shape)}, "
                         f"{tuple(g_c.shape)}, {tuple(b_c.shape)}")
    if T == 0:
        return xp.new_empty((0,) + tuple(h0.shape)), h0.clone(), c0.clone()
    if needs_grad(xp, h0, c0, W_hh, g_h, g_c, b_c):
        src, tokens = split_input(xp)
        return _LNLSTMScan.apply(src, h0, c0, W_hh, g_h, g_c, b_c, tokens)
    with torch.no_grad():
        out, saved = _forward(xp, h0, c0, W_hh, g_h, g_c, b_c, save=False)
        return out, out[-1].clone(), saved


# Saved per step, each stacked over T: AH (T, B, 4H) = LN(H_{t-1} @ W_hh) and RA (T, B, 1)
# its 1/sd; A (T, B, 4H) = the gates [I, F, G, O]; C (T, B, H); CH (T, B, H) = LN(C) and RC
# (T, B, 1) its 1/sd; TH (T, B, H) = tanh(g_c LN(C) + b_c).


def _forward(xp, h0, c0, W_hh, g_h, g_c, b_c, save: bool):
    """The outputs (T, B, H) and, with save, the buffers above as a dict; without, C_T."""
    B, H = h0.shape
    mm = cpu_matmul.Matmul(W_hh, B, xp, h0, c0)
    h, c, outs = h0, c0, []
    keep = {name: [] for name in ("AH", "RA", "A", "C", "CH", "RC", "TH")}
    for x_t in xp.unbind(0):
        ah, ra = normalized(mm(h))
        z = torch.addcmul(x_t, g_h, ah)  # [i, f, g, o]
        a = torch.sigmoid(z)  # [I, F, ., O]; then G = tanh(g) written into its block
        torch.tanh(z[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])
        c = torch.addcmul(a[:, H : 2 * H] * c, a[:, :H], a[:, 2 * H : 3 * H])  # C_t = F C_{t-1} + I G
        ch, rc = normalized(c)
        th = torch.tanh(torch.addcmul(b_c, g_c, ch))
        h = a[:, 3 * H :] * th
        outs.append(h)
        if save:
            for name, value in zip(keep, (ah, ra, a, c, ch, rc, th)):
                keep[name].append(value)
    out = torch.stack(outs)
    return out, ({name: torch.stack(values) for name, values in keep.items()} if save else c.clone())


class _LNLSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, h0, c0, W_hh, g_h, g_c, b_c, tokens):
        ctx.matmul_dtype = cpu_bfloat16.active_dtype()
        ctx.set_materialize_grads(False)
        out, saved = _forward(join_input(src, tokens), h0, c0, W_hh, g_h, g_c, b_c, save=True)
        ctx.save_for_backward(h0, c0, W_hh, g_h, g_c, out, src, tokens, *saved.values())
        return out, out[-1].clone(), saved["C"][-1].clone()

    @staticmethod
    @cpu_bfloat16.in_forward_precision
    @once_differentiable
    def backward(ctx, g_out, g_hT, g_cT):
        h0, c0, W_hh, g_h, g_c, out, src, tokens, AH, RA, A, C, CH, RC, TH = ctx.saved_tensors
        T, B, H = out.shape
        mm = cpu_matmul.Matmul(W_hh.t(), B, out)
        # Per step, with dH, dC_carry the gradients from above:
        #   dO_pre = dH tanh(n) O(1-O);  dn = dH O (1 - tanh(n)^2), n = g_c LN(C) + b_c;
        #   dC = LN'(g_c dn) + dC_carry;  dI_pre = dC G I(1-I);  dF_pre = dC Cprev F(1-F);
        #   dG_pre = dC I (1-G^2);  dC_carry' = dC F;  DZ = [dI, dF, dG, dO] (= d xp);
        #   DA = LN'(g_h DZ), the gradient w.r.t. H_{t-1} @ W_hh;  dH_{t-1} = g_out[t-1] + DA W_hh^T.
        # LN' is normalized_backward; the gains' and b_c's gradients are sums over all steps.
        gos = g_out.unbind(0) if g_out is not None else None
        dh = final_grad(gos, g_hT, h0)
        dc_carry = g_cT if g_cT is not None else torch.zeros_like(c0)
        DZ, DA, DN = A.new_empty((T, B, 4 * H)), A.new_empty((T, B, 4 * H)), A.new_empty((T, B, H))
        for t in range(T - 1, -1, -1):
            I, Fg, G, O = A[t].split(H, 1)
            th, c_prev = TH[t], (C[t - 1] if t else c0)
            dn = torch.mul(dh * O, 1 - th * th, out=DN[t])
            dc = normalized_backward(g_c * dn, CH[t], RC[t]) + dc_carry
            torch.cat([dc * G * I * (1 - I), dc * c_prev * Fg * (1 - Fg), dc * I * (1 - G * G),
                       dh * th * O * (1 - O)], 1, out=DZ[t])
            dc_carry = dc * Fg
            DA[t] = normalized_backward(g_h * DZ[t], AH[t], RA[t])
            dh = mm(DA[t], add=gos[t - 1] if t > 0 and gos is not None else None)
        need_x, need_h0, need_c0, need_w, need_gh, need_gc, need_bc, _ = ctx.needs_input_grad
        return ((input_grad(DZ, src, tokens) if need_x else None), (dh if need_h0 else None),
                (dc_carry if need_c0 else None), (weight_grad(h0, out, DA) if need_w else None),
                ((DZ * AH).sum((0, 1)) if need_gh else None), ((DN * CH).sum((0, 1)) if need_gc else None),
                (DN.sum((0, 1)) if need_bc else None), None)
