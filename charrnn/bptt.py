"""Recurrences of the RNN, GRU and LSTM cells with hand-written backpropagation through time.

The model computes the input projection of every time step in one matmul
(``xp = X @ W_xh + b``, shape (T, B, G)); only the recurrent product is left for the
per-step loop, which is what this module does. Each ``*_scan`` function returns the same
values (to float rounding) as the plain autograd loop; it saves only what its backward
needs, in buffers allocated once per call, and its backward:

* walks t = T-1 .. 0 with ONE matmul per step (``dA_t @ W_hh^T``), where ``dA_t`` is the
  gradient w.r.t. the pre-activation of the recurrent product, written into a (T, B, G)
  buffer preallocated once per call; the activation derivatives are formed per step, while
  that step's tiles are in cache;
* computes the weight gradient after the loop as ONE large matmul over all steps
  (``Hprev^T @ dA`` with ``Hprev = [h0, outputs[:-1]]``);
* returns the gradient w.r.t. ``xp`` as (a view of) that buffer, without a copy.

When no input requires grad (or grad mode is off, e.g. under ``torch.no_grad`` or
``torch.inference_mode``) a plain forward loop runs that saves nothing and reuses per-step
scratch buffers. Nothing in the loops syncs with the host, so this works on CUDA as well.
Double backward is not supported (the backward is ``once_differentiable``).

Also here: ``linear`` (``x @ W + b`` with the same fast CPU matmuls, e.g. for the input
projection), ``set_gemm_backend`` (choose the CPU float32 matmul: oneDNN or BLAS) and
``tune_allocator`` (stop glibc from page-faulting the big buffers anew on every call).
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch.autograd.function import once_differentiable

__all__ = ["rnn_scan", "gru_scan", "lstm_scan", "linear", "tune_allocator", "set_gemm_backend"]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _check(xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor, gates: int) -> tuple[int, int, int]:
    if xp.dim() != 3:
        raise ValueError(f"xp must be (T, B, {gates}*H), got shape {tuple(xp.shape)}")
    T, B, G = xp.shape
    H = W_hh.shape[0]
    if W_hh.shape != (H, gates * H) or G != gates * H:
        raise ValueError(
            f"W_hh must be (H, {gates}*H) matching xp's last dim; got W_hh {tuple(W_hh.shape)}, xp {tuple(xp.shape)}"
        )
    if h0.shape != (B, H):
        raise ValueError(f"initial state must be (B, H) = ({B}, {H}), got {tuple(h0.shape)}")
    return T, B, H


# ------------------------------------------------------------------------------ matmul backend
#
# torch.mm on CPU calls MKL's sgemm, and MKL takes a generic (non-AVX-512) code path on AMD
# CPUs: on the AMD EPYC this was developed on it reaches ~100 GFLOP/s per core, while
# oneDNN's JIT GEMM (what torch.nn.LSTM's CPU path uses) reaches ~210-225, i.e. each of the
# scans' matmuls is ~2x faster through oneDNN. PyTorch exposes oneDNN's fp32 GEMM through the
# (private, Inductor-facing) op torch.ops.mkldnn._linear_pointwise, so for CPU float32
# tensors the scans use it when a self-test at first use passes, and torch.mm/addmm
# otherwise (other devices and dtypes, e.g. the float64 tests, always use torch.mm/addmm).
# oneDNN allocates its output (no out=), so each step's result is then consumed by an
# activation that writes into the preallocated buffers, which costs no extra copy. Its fixed
# cost per call (~15 us) loses to MKL below ~2M multiply-adds per matmul (e.g. batch 16 x
# hidden 128), so small per-step matmuls stay on BLAS.

_GEMM_BACKENDS = ("auto", "blas", "onednn")
_gemm_backend = "auto"
_onednn_state: bool | None = None  # result of the one-time self-test
_ONEDNN_MIN_MACS = 1 << 21  # per matmul; measured crossover with MKL at 1 and 2 threads


def _probe_onednn() -> bool:
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        lp = torch.ops.mkldnn._linear_pointwise
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            a = torch.randn(6, 5, generator=g)
            b = torch.randn(5, 7, generator=g)
            c = torch.randn(6, 7, generator=g)
            bias = torch.randn(7, generator=g)
            want = a.double() @ b.double()
            cases = [
                (lp(a, b.t(), None, "none", [], ""), want),
                (lp(a, b.t(), bias, "none", [], ""), want + bias.double()),
                (lp.binary(a, c, b.t(), None, "add"), want + c.double()),
                (lp(a.t().contiguous().t(), b.t().contiguous(), None, "none", [], ""), want),  # strided input
            ]
        return all(
            r.dtype == torch.float32 and r.shape == w.shape and torch.allclose(r.double(), w, rtol=1e-5, atol=1e-5)
            for r, w in cases
        )
    except Exception:  # missing op, changed signature, build without oneDNN, ...
        return False


def _onednn_ok() -> bool:
    global _onednn_state
    if _onednn_state is None:
        _onednn_state = _probe_onednn()
    return _onednn_state


def set_gemm_backend(name: str) -> str:
    """Choose the matmul used by the scans for CPU float32: "auto" (default: oneDNN when its
    self-test passes, else BLAS), "blas" (always torch.mm/addmm) or "onednn" (raises
    RuntimeError when unavailable). Returns the previous setting. Other devices and dtypes
    always use torch.mm/addmm."""
    global _gemm_backend
    if name not in _GEMM_BACKENDS:
        raise ValueError(f"gemm backend must be one of {_GEMM_BACKENDS}, got {name!r}")
    if name == "onednn" and not _onednn_ok():
        raise RuntimeError("oneDNN matmul (torch.ops.mkldnn._linear_pointwise) is not usable in this torch build")
    prev, _gemm_backend = _gemm_backend, name
    return prev


def _use_onednn(macs: int, *tensors: torch.Tensor) -> bool:
    """Whether a matmul of ``macs`` multiply-adds on these tensors goes through oneDNN."""
    if _gemm_backend == "blas" or (_gemm_backend == "auto" and macs < _ONEDNN_MIN_MACS):
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.layout != torch.strided:
            return False
    return bool(torch.backends.mkldnn.enabled) and _onednn_ok()


def _mm(dnn: bool, a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None, out=None) -> torch.Tensor:
    """``add + a @ b`` (``add`` broadcast: a (N,) bias or an (M, N) matrix).

    BLAS: computed into ``out`` when given (``add`` may alias ``out``). oneDNN: returns a new
    tensor and ignores ``out``."""
    if dnn:
        lp = torch.ops.mkldnn._linear_pointwise
        if not (b.is_contiguous() or b.t().is_contiguous()):
            b = b.contiguous()  # oneDNN runs a slow reference kernel on other weight strides
        w = b.t()  # oneDNN's linear computes a @ w^T with w (N, K)
        if add is None:
            return lp(a, w, None, "none", [], "")
        if add.dim() == 1:
            return lp(a, w, add.contiguous(), "none", [], "")
        if add.is_contiguous():
            return lp.binary(a, add, w, None, "add")
        return lp(a, w, None, "none", [], "").add_(add)
    if add is None:
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    return torch.addmm(add, a, b) if out is None else torch.addmm(add, a, b, out=out)


def _plain(W: torch.Tensor) -> torch.Tensor:
    """W itself when it or its transpose is contiguous (what BLAS and oneDNN take without a
    copy), else a contiguous copy, made once per call rather than once per step."""
    return W if W.is_contiguous() or W.t().is_contiguous() else W.contiguous()


def _weight_grad(h0: torch.Tensor, out: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """sum_t Hprev_t^T @ dA_t with Hprev = [h0, out[:-1]], as one big matmul (plus one small)."""
    T, B, H = out.shape
    G = dA.shape[-1]
    dnn = _use_onednn(T * B * H * G, out, dA)
    # (With oneDNN, Hprev^T is copied to contiguous by the op, and GRU's row-strided dA by _mm:
    # straight copies, ~7 ms each at 16-48 MB; transposing the strided dA instead is ~10x slower.)
    dW = _mm(dnn, h0.t(), dA[0])
    if T > 1:
        dW = _mm(dnn, out[:-1].reshape(-1, H).t(), dA[1:].reshape(-1, G), add=dW, out=dW)
    return dW


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, W, b):
        ctx.save_for_backward(x2, W)
        ctx.has_bias = b is not None
        return _mm(True, x2, W, add=b)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x2, W = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = _mm(True, g, W.t()) if need_x else None
        dW = _mm(True, x2.t(), g) if need_w else None
        db = g.sum(0) if need_b and ctx.has_bias else None
        return dx, dW, db


def linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W + b`` for x (..., I), W (I, G), b (G,) or None, e.g. the input projection of all
    time steps (``xp = linear(X, W_xh, b)``). Through oneDNN (forward and backward) for CPU
    float32 when the matmul backend allows, since there it is ~2x faster than torch.addmm's
    MKL path on AMD CPUs; elsewhere exactly ``torch.addmm``/``torch.mm`` with autograd."""
    lead = x.shape[:-1]
    I, G = W.shape
    x2 = x.reshape(-1, I)
    tensors = (x2, W) if b is None else (x2, W, b)
    if _use_onednn(x2.shape[0] * I * G, *tensors) and x2.shape[0] > 0:
        W = _plain(W)
        if _needs_grad(*tensors):
            y = _Linear.apply(x2, W, b)
        else:
            with torch.no_grad():
                y = _mm(True, x2, W, add=b)
    else:
        y = torch.mm(x2, W) if b is None else torch.addmm(b, x2, W)
    return y.reshape(*lead, G)


# ------------------------------------------------------------------------------ allocator
#
# Buffers of (T, B, G) floats are tens of MB. glibc serves allocations above its mmap
# threshold (dynamic: it rises from 128 KiB as mmapped blocks are freed, but only up to
# 32 MiB) with a fresh mmap and unmaps them on free, so every call page-faults its buffers in
# anew. Measured on glibc 2.36 at hidden 512, batch 64, seq 128, forward+backward of one
# GRU/LSTM layer: ~50-57k minor faults and 85-115 ms of system time per call, 20-25% of the
# single-thread wall time (faults are expensive in a VM). Setting M_MMAP_THRESHOLD to 32 MiB
# changes nothing (the 64-128 MiB gate buffers still exceed it); setting it to 1 GiB, or
# M_MMAP_MAX = 0, together with a large M_TRIM_THRESHOLD, removes all of them (0 faults per
# call): the buffers are recycled from the heap.

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_allocator_tuned: bool | None = None


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc recycle large blocks instead of mmapping/unmapping them per call.

    Sets M_MMAP_THRESHOLD = ``mmap_threshold`` (falling back to M_MMAP_MAX = 0 where glibc
    refuses a threshold that high) and M_TRIM_THRESHOLD = ``trim_threshold`` (free memory kept
    at the top of the heap), both 1 GiB by default. Process-wide; meant to be called once,
    early, by a training program. The cost: freed memory stays with the process (its RSS does
    not shrink back after a peak). Returns True when applied; a no-op returning False where
    the C library is not glibc. Repeated calls do nothing and return the first result.
    """
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = _set_mallopt(mmap_threshold, trim_threshold)
    return _allocator_tuned


def _set_mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: leave alone
            return False
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int

    def clamp(v: int) -> int:
        return max(0, min(int(v), 2**31 - 1))

    ok = bool(mallopt(_M_MMAP_THRESHOLD, clamp(mmap_threshold))) or bool(mallopt(_M_MMAP_MAX, 0))
    return ok and bool(mallopt(_M_TRIM_THRESHOLD, clamp(trim_threshold)))


# --------------------------------------------------------------------------------------- RNN


def _rnn_forward(xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor) -> torch.Tensor:
    T, B, H = xp.shape
    dnn = _use_onednn(B * H * H, xp, h0, W_hh)
    W_hh = _plain(W_hh)
    out = xp.new_empty((T, B, H))
    h = h0
    for x_t, o_t in zip(xp.unbind(0), out.unbind(0)):
        torch.tanh(_mm(dnn, h, W_hh, add=x_t, out=o_t), out=o_t)
        h = o_t
    return out


def _init_grad(g_outs, g_final: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Gradient into the last hidden state: from outputs[T-1] and/or the returned final state."""
    if g_final is None:
        return g_outs[-1] if g_outs is not None else torch.zeros_like(like)
    return g_final if g_outs is None else g_outs[-1] + g_final


class _RNNScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, h0, W_hh):
        out = _rnn_forward(xp, h0, W_hh)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h0, W_hh, out)
        return out, out[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hT):
        h0, W_hh, out = ctx.saved_tensors
        T, B, H = out.shape
        dnn = _use_onednn(B * H * H, out, W_hh)
        WT = _plain(W_hh).t()
        one = out.new_ones(())
        dA = torch.empty_like(out)
        dAs, outs = dA.unbind(0), out.unbind(0)
        gos = g_out.unbind(0) if g_out is not None else None
        dh = _init_grad(gos, g_hT, h0)
        scratch = torch.empty_like(dA[0])
        for t in range(T - 1, -1, -1):
            dA_t = dAs[t]
            torch.addcmul(one, outs[t], outs[t], value=-1, out=dA_t)  # dA_t = (1 - H_t^2) * dH_t
            dA_t.mul_(dh)
            # dH_{t-1} = g_out[t-1] + dA_t @ W_hh^T
            dh = _mm(dnn, dA_t, WT, add=gos[t - 1] if t > 0 and gos is not None else None, out=scratch)
        need_x, need_h0, need_w = ctx.needs_input_grad
        dW = _weight_grad(h0, out, dA) if need_w else None
        return (dA if need_x else None), (dh if need_h0 else None), dW


def rnn_scan(xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elman RNN recurrence ``H_t = tanh(xp[t] + H_{t-1} @ W_hh)``.

    xp: (T, B, H) input projections (biases included); h0: (B, H); W_hh: (H, H).
    Returns (outputs (T, B, H), hT (B, H)).
    """
    T, _, _ = _check(xp, h0, W_hh, 1)
    if T == 0:
        return xp.new_empty(xp.shape), h0.clone()
    if _needs_grad(xp, h0, W_hh):
        return _RNNScan.apply(xp, h0, W_hh)
    with torch.no_grad():
        out = _rnn_forward(xp, h0, W_hh)
        return out, out[-1].clone()


# --------------------------------------------------------------------------------------- GRU
#
# Saved per step (buffer S of shape (T, B, 4H)): [R, Z, h_n, N], where h_n is the n-part of
# H_{t-1} @ W_hh + b_hh. With BLAS the step's addmm writes [h_r, h_z, h_n] straight into
# S[t][:, :3H] and the sigmoid then overwrites h_r, h_z with R, Z in place.
#
# Backward buffer D of shape (T, B, 4H) holds per step [dh_n, dR_pre, dZ_pre, dN_pre]:
#   D[..., H:]  = [dR_pre, dZ_pre, dN_pre]  is the gradient w.r.t. xp (gate order r, z, n);
#   D[..., :3H] = [dh_n, dR_pre, dZ_pre]   is the hidden-side gradient in gate order n, r, z,
# which the per-step matmul and the final weight-gradient matmul use with W_hh's columns
# permuted to (n, r, z). Thus the input and hidden sides, which differ only in the n chunk
# (dh_n = R * dN_pre), share one buffer: the gradient w.r.t. xp needs no copy. (oneDNN copies
# the row-strided hidden side to contiguous: per step inside the op, B x 3H, and once for the
# weight gradient.)


def _gru_forward(xp, h0, W_hh, b_hh, save: bool):
    T, B, G = xp.shape
    H = G // 3
    dnn = _use_onednn(B * H * G, xp, h0, W_hh, b_hh)
    W_hh = _plain(W_hh)
    if dnn:
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
        hh = _mm(dnn, h, W_hh, add=b_hh, out=s[:, : 3 * H])  # [h_r, h_z, h_n]
        rz = s[:, : 2 * H]
        torch.add(hh[:, : 2 * H], x_t[:, : 2 * H], out=rz).sigmoid_()
        hn = s[:, 2 * H : 3 * H]
        if dnn:
            hn.copy_(hh[:, 2 * H :])
        R = s[:, :H]
        Z = s[:, H : 2 * H]
        N = s[:, 3 * H :]
        torch.addcmul(x_t[:, 2 * H :], R, hn, out=N)
        N.tanh_()
        # H_t = (1 - Z) * N + Z * H_{t-1} = N + Z * (H_{t-1} - N)
        torch.sub(h, N, out=o_t)
        o_t.mul_(Z).add_(N)
        h = o_t
    return out, (S if save else None)


class _GRUScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, h0, W_hh, b_hh):
        out, S = _gru_forward(xp, h0, W_hh, b_hh, save=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h0, W_hh, out, S)
        return out, out[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hT):
        h0, W_hh, out, S = ctx.saved_tensors
        T, B, H = out.shape
        dnn = _use_onednn(B * H * 3 * H, out, W_hh)
        # W_hh with its columns permuted from (r, z, n) to (n, r, z), transposed for dA @ W^T.
        WpT = torch.cat((W_hh[:, 2 * H :], W_hh[:, : 2 * H]), dim=1).t()

        # Everything per step, while the step's tiles are in cache (whole-sequence elementwise
        # passes over these tens-of-MB buffers cost more in memory traffic than they save in
        # op calls). Per step, with dH the gradient w.r.t. H_t:
        #   dN_pre = dH (1-Z)(1-N^2); dZ_pre = dH (Hprev-N) Z(1-Z); dR_pre = dN_pre h_n R(1-R);
        #   dh_n = R dN_pre; dH_{t-1} = g_out[t-1] + dH Z + [dh_n, dR_pre, dZ_pre] @ Wp^T.
        one = out.new_ones(())
        D = S.new_empty((T, B, 4 * H))
        gos = g_out.unbind(0) if g_out is not None else None
        dh = _init_grad(gos, g_hT, h0)
        Ss, Ds, outs = S.unbind(0), D.unbind(0), out.unbind(0)
        scratch = (torch.empty_like(out[0]), torch.empty_like(out[0]))
        tmp = torch.empty_like(out[0])
        for t in range(T - 1, -1, -1):
            s, d = Ss[t], Ds[t]
            R, Z, hn, N = s[:, :H], s[:, H : 2 * H], s[:, 2 * H : 3 * H], s[:, 3 * H :]
            dhn, dR, dZ, dNp, dRZ = d[:, :H], d[:, H : 2 * H], d[:, 2 * H : 3 * H], d[:, 3 * H :], d[:, H : 3 * H]
            hprev = outs[t - 1] if t > 0 else h0
            nxt = scratch[t & 1]  # never aliases dh, which lives in the other one (or elsewhere)
            torch.mul(s[:, : 2 * H], s[:, : 2 * H], out=dRZ)
            torch.sub(s[:, : 2 * H], dRZ, out=dRZ)  # R(1-R), Z(1-Z)
            torch.mul(dh, Z, out=nxt)  # dH Z
            torch.sub(dh, nxt, out=tmp)  # dH (1-Z)
            torch.addcmul(one, N, N, value=-1, out=dNp)
            dNp.mul_(tmp)  # dN_pre
            torch.sub(hprev, N, out=tmp)
            dZ.mul_(tmp).mul_(dh)  # dZ_pre
            dR.mul_(hn).mul_(dNp)  # dR_pre
            torch.mul(dNp, R, out=dhn)  # dh_n
            if t > 0 and gos is not None:
                nxt.add_(gos[t - 1])
            dh = _mm(dnn, d[:, : 3 * H], WpT, add=nxt, out=nxt)

        need_x, need_h0, need_w, need_b = ctx.needs_input_grad
        dW = db = None
        Dh = D[..., : 3 * H]
        if need_w:
            dWp = _weight_grad(h0, out, Dh)
            dW = torch.cat((dWp[:, H:], dWp[:, :H]), dim=1)
        if need_b:
            dbp = Dh.sum(dim=(0, 1))
            db = torch.cat((dbp[H:], dbp[:H]))
        return (D[..., H:] if need_x else None), (dh if need_h0 else None), dW, db


def gru_scan(
    xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU recurrence in torch.nn.GRU's form, gate order (r, z, n).

    xp: (T, B, 3H) = X @ W_xh + b_xh; h0: (B, H); W_hh: (H, 3H); b_hh: (3H,).
    With hh = H_{t-1} @ W_hh + b_hh and both xp[t] and hh split into (r, z, n):
    R = sigmoid(x_r + h_r); Z = sigmoid(x_z + h_z); N = tanh(x_n + R * h_n);
    H_t = (1 - Z) * N + Z * H_{t-1}. Returns (outputs (T, B, H), hT (B, H)).
    """
    T, _, H = _check(xp, h0, W_hh, 3)
    if b_hh.shape != (3 * H,):
        raise ValueError(f"b_hh must be (3H,) = ({3 * H},), got {tuple(b_hh.shape)}")
    if T == 0:
        return xp.new_empty((0,) + tuple(h0.shape)), h0.clone()
    if _needs_grad(xp, h0, W_hh, b_hh):
        return _GRUScan.apply(xp, h0, W_hh, b_hh)
    with torch.no_grad():
        out, _ = _gru_forward(xp, h0, W_hh, b_hh, save=False)
        return out, out[-1].clone()


# -------------------------------------------------------------------------------------- LSTM
#
# Saved: gate activations A (T, B, 4H) = [I, F, G, O] (the activations write straight into A
# from the step's matmul result; with BLAS that result already is A[t], so in place), cells
# C (T, B, H) and tanh(C) (T, B, H). Backward buffer D (T, B, 4H) = [dI, dF, dG, dO]
# pre-activation gradients, which is also the gradient w.r.t. xp.


def _lstm_forward(xp, h0, c0, W_hh, save: bool):
    T, B, G4 = xp.shape
    H = G4 // 4
    dnn = _use_onednn(B * H * G4, xp, h0, c0, W_hh)
    W_hh = _plain(W_hh)
    out = xp.new_empty((T, B, H))
    if save:
        A = xp.new_empty((T, B, 4 * H))
        C = xp.new_empty((T, B, H))
        TC = xp.new_empty((T, B, H))
        a_steps, c_steps, tc_steps = A.unbind(0), C.unbind(0), TC.unbind(0)
    else:
        a = xp.new_empty((B, 4 * H))
        tc = xp.new_empty((B, H))
        cbufs = (xp.new_empty((B, H)), xp.new_empty((B, H)))
        a_steps, tc_steps = (a,) * T, (tc,) * T
        c_steps = tuple(cbufs[t & 1] for t in range(T))
    h, c = h0, c0
    for x_t, a, c_t, tc, o_t in zip(xp.unbind(0), a_steps, c_steps, tc_steps, out.unbind(0)):
        g = _mm(dnn, h, W_hh, add=x_t, out=a)
        torch.sigmoid(g[:, : 2 * H], out=a[:, : 2 * H])
        torch.tanh(g[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])
        torch.sigmoid(g[:, 3 * H :], out=a[:, 3 * H :])
        I = a[:, :H]
        F = a[:, H : 2 * H]
        Gt = a[:, 2 * H : 3 * H]
        O = a[:, 3 * H :]
        torch.mul(F, c, out=c_t)
        c_t.addcmul_(I, Gt)
        torch.tanh(c_t, out=tc)
        torch.mul(O, tc, out=o_t)
        h, c = o_t, c_t
    if save:
        return out, A, C, TC
    return out, None, c, None


class _LSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xp, h0, c0, W_hh):
        out, A, C, TC = _lstm_forward(xp, h0, c0, W_hh, save=True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h0, c0, W_hh, out, A, C, TC)
        return out, out[-1].clone(), C[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_hT, g_cT):
        h0, c0, W_hh, out, A, C, TC = ctx.saved_tensors
        T, B, H = out.shape
        dnn = _use_onednn(B * H * 4 * H, out, W_hh)
        WT = _plain(W_hh).t()
        # Per step (see the GRU's note), with dH, dC_carry the gradients from above:
        #   dC = dC_carry + dH O (1 - tanh(C)^2);  dO_pre = dH tanh(C) O(1-O);
        #   dI_pre = dC G I(1-I);  dF_pre = dC Cprev F(1-F);  dG_pre = dC I (1-G^2);
        #   dC_carry' = dC F;  dH_{t-1} = g_out[t-1] + [dI, dF, dG, dO] @ W_hh^T.
        one = out.new_ones(())
        D = A.new_empty((T, B, 4 * H))
        gos = g_out.unbind(0) if g_out is not None else None
        dh = _init_grad(gos, g_hT, h0)
        dc_carry = g_cT if g_cT is not None else torch.zeros_like(c0)
        As, Ds, Cs, TCs = A.unbind(0), D.unbind(0), C.unbind(0), TC.unbind(0)
        dc = torch.empty_like(out[0])
        tmp = torch.empty_like(out[0])
        carry = (torch.empty_like(out[0]), torch.empty_like(out[0]))
        dh_buf = torch.empty_like(out[0])
        for t in range(T - 1, -1, -1):
            a, d, tc = As[t], Ds[t], TCs[t]
            I, F, Gt, O = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            dG, dO = d[:, 2 * H : 3 * H], d[:, 3 * H :]
            torch.mul(a, a, out=d)
            torch.sub(a, d, out=d)  # s(1-s) for all four chunks; G's is replaced next
            torch.addcmul(one, Gt, Gt, value=-1, out=dG)
            torch.addcmul(one, tc, tc, value=-1, out=tmp)
            tmp.mul_(O)
            torch.addcmul(dc_carry, dh, tmp, out=dc)  # dC
            dO.mul_(tc).mul_(dh)
            d[:, :H].mul_(Gt)
            d[:, H : 2 * H].mul_(Cs[t - 1] if t > 0 else c0)
            dG.mul_(I)
            d[:, : 3 * H].view(B, 3, H).mul_(dc.unsqueeze(1))
            dc_carry = torch.mul(dc, F, out=carry[t & 1])
            dh = _mm(dnn, d, WT, add=gos[t - 1] if t > 0 and gos is not None else None, out=dh_buf)

        need_x, need_h0, need_c0, need_w = ctx.needs_input_grad
        dW = _weight_grad(h0, out, D) if need_w else None
        return (D if need_x else None), (dh if need_h0 else None), (dc_carry if need_c0 else None), dW


def lstm_scan(
    xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, W_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSTM recurrence, gate order (i, f, g, o) as in torch.nn.LSTM.

    xp: (T, B, 4H) input projections including ALL biases; h0, c0: (B, H); W_hh: (H, 4H).
    g4 = xp[t] + H_{t-1} @ W_hh; I, F, O = sigmoid; G = tanh;
    C_t = F * C_{t-1} + I * G; H_t = O * tanh(C_t). Returns (outputs (T, B, H), hT, cT).
    """
    T, _, _ = _check(xp, h0, W_hh, 4)
    if c0.shape != h0.shape:
        raise ValueError(f"c0 must have h0's shape {tuple(h0.shape)}, got {tuple(c0.shape)}")
    if T == 0:
        return xp.new_empty((0,) + tuple(h0.shape)), h0.clone(), c0.clone()
    if _needs_grad(xp, h0, c0, W_hh):
        return _LSTMScan.apply(xp, h0, c0, W_hh)
    with torch.no_grad():
        out, _, cT, _ = _lstm_forward(xp, h0, c0, W_hh, save=False)
        return out, out[-1].clone(), cT.clone()
