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

A first layer over characters passes a ``Gathered(table, tokens)`` instead of ``xp``: each
step's input rows are then gathered from ``table = W_xh + b`` just before the step.

When no input requires grad (or grad mode is off, e.g. under ``torch.no_grad`` or
``torch.inference_mode``) a plain forward loop runs that saves nothing and reuses per-step
scratch buffers. Nothing in the loops syncs with the host, so this works on CUDA as well,
where the GRU and LSTM steps run as PyTorch's fused cell kernels (see "fused cells").
Double backward is not supported (the backward is ``once_differentiable``).

Also here: ``linear`` (``x @ W + b`` with the same fast CPU matmuls, e.g. for the input
projection), ``set_gemm_backend`` (choose the CPU float32 matmul: oneDNN or BLAS) and
``tune_allocator`` (stop glibc from page-faulting the big buffers anew on every call).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import sys
import time

import torch
from torch.autograd.function import once_differentiable

__all__ = ["rnn_scan", "gru_scan", "lstm_scan", "Gathered", "linear", "tune_allocator", "set_gemm_backend"]


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _float32_recurrence(scan):
    """Under autocast (e.g. training with --amp bf16) a scan runs in float32 all the same:
    its state is carried through every step, where bfloat16's 8-bit mantissa would pile up
    error, and its in-place per-step arithmetic needs one dtype. Inputs that autocast made
    half precision (a deeper layer's xp from a bfloat16 projection) are cast up, which is
    differentiable; the matmuls still use TF32 where that is allowed, and on a CPU
    autocasting to bfloat16 they take bfloat16 operands (see "bfloat16 matmuls")."""

    @functools.wraps(scan)
    def wrapper(*tensors):
        device_type = tensors[0].device.type
        if not _autocast_enabled(device_type):
            return scan(*tensors)
        low = _autocast_matmul_dtype(device_type)  # (read before autocast is switched off)
        with torch.autocast(device_type=device_type, enabled=False), matmul_dtype(low):
            return scan(*(t.float() if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16)
                          else t for t in tensors))

    return wrapper


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


class Gathered:
    """The input side of a first layer over characters, ``xp[t] = table[tokens[t]]`` (the
    one-hot product ``one_hot(tokens) @ W_xh + b`` as a row gather from ``table = W_xh +
    b``), given to a scan in place of ``xp``: each step's rows are gathered just before the
    step, into one reused (B, G) buffer that stays in cache, instead of building the whole
    (T, B, G) ``xp`` first (tens of MB written, then read back from memory step by step).
    The scans' gradient for ``table`` is the scatter-add of their gradient w.r.t. ``xp``.

    table: (V, G) floats; tokens: (T, B) integer ids. Stands in for xp where the scans look
    at it: shape, dim(), device, dtype, layout, requires_grad, new_empty/new_zeros, unbind(0).
    """

    def __init__(self, table: torch.Tensor, tokens: torch.Tensor):
        if table.dim() != 2 or tokens.dim() != 2:
            raise ValueError(f"Gathered takes a (V, G) table and (T, B) tokens, got {tuple(table.shape)}, "
                             f"{tuple(tokens.shape)}")
        self.table, self.tokens = table, tokens
        self.shape = torch.Size((*tokens.shape, table.shape[1]))
        self.device, self.dtype, self.layout = table.device, table.dtype, table.layout
        self.requires_grad = table.requires_grad

    def dim(self) -> int:
        return 3

    def new_empty(self, *args, **kwargs) -> torch.Tensor:
        return self.table.new_empty(*args, **kwargs)

    def new_zeros(self, *args, **kwargs) -> torch.Tensor:
        return self.table.new_zeros(*args, **kwargs)

    def unbind(self, dim: int = 0):
        """Step t's (B, G) input, for t = 0 .. T-1; valid until the next one is drawn."""
        if dim != 0:
            raise ValueError("Gathered unbinds along time (dim 0) only")
        buf = self.table.new_empty((self.shape[1], self.shape[2]))
        return (torch.index_select(self.table, 0, ids, out=buf) for ids in self.tokens.unbind(0))


def _source(xp) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What a scan's autograd Function takes for its input side: (xp, None), or (table, tokens)."""
    return (xp.table, xp.tokens) if isinstance(xp, Gathered) else (xp, None)


def _input(src: torch.Tensor, tokens: torch.Tensor | None):
    return src if tokens is None else Gathered(src, tokens)


def _input_grad(D: torch.Tensor, src: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """The gradient for the input side from D, the gradient w.r.t. xp: D itself, or for a
    gathered input the rows of D added up per token (what F.embedding's backward does)."""
    if tokens is None:
        return D
    return torch.ops.aten.embedding_dense_backward(D, tokens, src.shape[0], -1, False)


# ------------------------------------------------------------------------------ matmul backend
#
# torch.mm on CPU calls MKL's sgemm; PyTorch also exposes oneDNN's fp32 GEMM (what
# torch.nn.LSTM's CPU path uses) through the private, Inductor-facing op
# torch.ops.mkldnn._linear_pointwise. Which is faster depends on the CPU and on the shape:
# MKL takes a generic code path on AMD CPUs, where oneDNN is about twice as fast; on Intel
# CPUs MKL wins most shapes, and each library has shapes where it loses
# (docs/performance.md). So with the "auto" backend each CPU float32 matmul shape is timed
# through both, once per process, the first time it is needed, and goes to the faster one
# (oneDNN only after a self-test of the op passes; below a size where one call's fixed cost
# dominates, BLAS without timing). Other devices and dtypes (the float64 tests) always use
# torch.mm/addmm. A run records the choices in its checkpoints and adopts them when it
# resumes (gemm_choices / adopt_gemm_choices), so a resumed run computes exactly as before.
# oneDNN allocates its output (no out=), so each step's result is then consumed by an
# activation that writes into the preallocated buffers, which costs no extra copy.

_GEMM_BACKENDS = ("auto", "blas", "onednn")
_gemm_backend = "auto"
_onednn_state: bool | None = None  # result of the one-time self-test
_ONEDNN_MIN_MACS = 1 << 21  # per matmul; below it BLAS, untimed (oneDNN's per-call cost)
_PACKED_MIN_MACS = 1 << 20  # the same with the weight packed once (see _Matmul)
_ONEDNN_MIN_GAIN = 1.05  # oneDNN is taken when it is this much faster: near-ties stay on BLAS
_choices: dict[tuple, bool] = {}  # (M, K, N, packed, threads) -> whether oneDNN is the faster


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
            packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), 6)
            cases = [
                (lp(a, b.t(), None, "none", [], ""), want),
                (lp(a, b.t(), bias, "none", [], ""), want + bias.double()),
                (lp.binary(a, c, b.t(), None, "add"), want + c.double()),
                (lp(a.t().contiguous().t(), b.t().contiguous(), None, "none", [], ""), want),  # strided input
                (lp(a, packed, None, "none", [], ""), want),
                (lp(a, packed, bias, "none", [], ""), want + bias.double()),
                (lp.binary(a, c, packed, None, "add"), want + c.double()),
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


def _use_onednn(shape: tuple[int, int, int], *tensors: torch.Tensor, packed: bool = False) -> bool:
    """Whether an (M, K) @ (K, N) matmul on these tensors goes through oneDNN."""
    M, K, N = shape
    if _gemm_backend == "blas" or (_gemm_backend == "auto" and M * K * N < (_PACKED_MIN_MACS if packed else _ONEDNN_MIN_MACS)):
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.layout != torch.strided:
            return False
    if not (torch.backends.mkldnn.enabled and _onednn_ok()):
        return False
    return _gemm_backend == "onednn" or _onednn_faster(M, K, N, packed)


def _onednn_faster(M: int, K: int, N: int, packed: bool) -> bool:
    key = (M, K, N, packed, torch.get_num_threads())
    if key not in _choices:
        _choices[key] = _time_backends(M, K, N, packed)
    return _choices[key]


def _time_backends(M: int, K: int, N: int, packed: bool) -> bool:
    """Whether oneDNN computes an (M, K) @ (K, N) product _ONEDNN_MIN_GAIN times faster than
    torch.mm: best of three timings of each, taking turns, of ~40 M multiply-adds each."""
    lp = torch.ops.mkldnn._linear_pointwise
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        a, W = torch.randn(M, K), torch.randn(K, N)
        w = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), M) if packed else W.t().contiguous()
        calls = max(1, (40 << 20) // (M * K * N))
        best = {"blas": math.inf, "onednn": math.inf}
        for _ in range(4):
            for name in best:
                started = time.perf_counter()
                for _ in range(calls):
                    torch.mm(a, W) if name == "blas" else lp(a, w, None, "none", [], "")
                best[name] = min(best[name], time.perf_counter() - started)
    return best["onednn"] * _ONEDNN_MIN_GAIN < best["blas"]


def gemm_choices() -> list[list]:
    """The backend chosen for each matmul shape timed so far, as plain lists (for a
    checkpoint): [M, K, N, packed, threads, whether oneDNN]."""
    return [[*key, onednn] for key, onednn in _choices.items()]


def adopt_gemm_choices(choices: list) -> None:
    """Take a resumed run's recorded choices instead of timing those shapes anew."""
    for *key, onednn in choices:
        _choices[tuple(key)] = bool(onednn)


def _mm(dnn: bool, a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None, out=None) -> torch.Tensor:
    """``add + a @ b`` (``add`` broadcast: a (N,) bias or an (M, N) matrix).

    BLAS: computed into ``out`` when given (``add`` may alias ``out``). oneDNN: returns a new
    tensor and ignores ``out``. Under matmul_dtype, the bfloat16 product (into ``out``)."""
    low = _low(a, b)
    if low is not None:
        return _mm_low(low, a, b, add, out)
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


class _Matmul:
    """``add + a @ W`` for one weight W (K, N) used again and again on ``rows`` x K inputs:
    the per-step product of a scan. Through oneDNN (when ``_use_onednn`` allows) with W
    reordered once, when the scan starts, into the blocked layout oneDNN's kernel reads
    ("packed"; a plain weight is reordered inside every call): ~10-15% faster per step at
    batch 64, ~45% at batch 16, and ahead of MKL from ~1M multiply-adds (a single row, a
    matrix-vector product, stays with BLAS). Else torch.mm/addmm, into ``out`` when given
    (``add`` may alias ``out``); oneDNN returns a new tensor and ignores ``out``."""

    def __init__(self, W: torch.Tensor, rows: int, *others: torch.Tensor):
        K, N = W.shape
        self.low = _low(W, *others)
        self.dnn = self.low is None and rows > 1 and _use_onednn((rows, K, N), W, *others, packed=True)
        if self.low is not None:
            self.W = W.to(self.low)  # cast once per scan, not once per step
        elif self.dnn:
            self.W = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), rows)
        else:
            self.W = _plain(W)

    def __call__(self, a: torch.Tensor, add: torch.Tensor | None = None, out=None) -> torch.Tensor:
        if self.low is not None:
            return _mm_low(self.low, a, self.W, add, out)
        if not self.dnn:
            if add is None:
                return torch.mm(a, self.W) if out is None else torch.mm(a, self.W, out=out)
            return torch.addmm(add, a, self.W) if out is None else torch.addmm(add, a, self.W, out=out)
        lp = torch.ops.mkldnn._linear_pointwise
        if add is None:
            return lp(a, self.W, None, "none", [], "")
        if add.dim() == 1:
            return lp(a, self.W, add, "none", [], "")
        if add.is_contiguous():
            return lp.binary(a, add, self.W, None, "add")
        return lp(a, self.W, None, "none", [], "").add_(add)


# ------------------------------------------------------------------------------ bfloat16 matmuls
#
# On a CPU with bfloat16 matrix instructions (AMX, AVX512-BF16) oneDNN's bfloat16 GEMM is
# several times its float32 one (docs/performance.md). Under CPU autocast to bfloat16
# (training with --amp bf16) the scans and linear() give their matmuls bfloat16 operands and
# keep everything else in float32: the carried state, the gates' arithmetic, the sums with
# the input side, the weights and the gradients they accumulate. Each product is rounded to
# bfloat16 once, at its output; no state is ever stored in bfloat16. A scan's backward runs
# in the precision its forward ran in (each autograd Function records it).

_matmul_dtype: torch.dtype | None = None  # None: every matmul in its operands' own dtype
BFLOAT16_MIN_GAIN = 1.5  # --amp auto takes bfloat16 where its GEMM is this much faster


@contextlib.contextmanager
def matmul_dtype(dtype: torch.dtype | None):
    """Within the block, CPU float32 matmuls of the scans and linear() take operands of
    ``dtype`` (torch.bfloat16), or their own dtype with None."""
    global _matmul_dtype
    previous, _matmul_dtype = _matmul_dtype, dtype
    try:
        yield
    finally:
        _matmul_dtype = previous


def _autocast_matmul_dtype(device_type: str) -> torch.dtype | None:
    if device_type == "cpu" and _autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return None


def _low(*tensors: torch.Tensor) -> torch.dtype | None:
    """The dtype a matmul of these tensors takes its operands in, if not their own."""
    if _matmul_dtype is None:
        return None
    ok = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    return _matmul_dtype if ok else None


def _mm_low(low: torch.dtype, a: torch.Tensor, b: torch.Tensor, add=None, out=None) -> torch.Tensor:
    """``add + a @ b`` with the product's operands in ``low``; the result in float32."""
    product = torch.mm(a.to(low), b.to(low))
    if add is None:
        return product.float() if out is None else out.copy_(product)
    return torch.add(add, product) if out is None else torch.add(add, product, out=out)


def bfloat16_pays(device: torch.device) -> bool:
    """Whether this CPU's bfloat16 GEMM is well ahead of its float32 one (bfloat16 matrix
    instructions), timed on a per-step product of the scans' size. False on other devices."""
    if device.type != "cpu":
        return False
    a, b = torch.randn(64, 512), torch.randn(512, 2048)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16):
        x, w = a.to(dtype), b.to(dtype)
        torch.mm(x, w)
        started = time.perf_counter()
        for _ in range(5):
            torch.mm(x, w)
        took = time.perf_counter() - started
        seconds[dtype] = min(seconds.get(dtype, took), took)
    return seconds[torch.bfloat16] * BFLOAT16_MIN_GAIN < seconds[torch.float32]


def _in_forward_precision(backward):
    """Runs an autograd Function's backward with the matmul dtype its forward recorded."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with matmul_dtype(ctx.matmul_dtype):
            return backward(ctx, *grads)

    return wrapper


# torch.tanh's CPU kernel is slow: on the AMD EPYC this was tuned on, ~9x slower than
# torch.sigmoid's (a 64 x 512 float32 block: 63 us against 7). tanh(x) = 2 sigmoid(2x) - 1 in
# four cheap ops takes ~15 us, within 2e-7 of tanh (absolute; float32 rounds tanh to ~6e-8).
# The scans use it for CPU float32 blocks of 2048 elements and more; elsewhere (small blocks,
# CUDA, float64) torch.tanh.


_FAST_TANH_MIN = 2048  # below this many elements torch.tanh's one call is the cheaper


def _fast_tanh(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() >= _FAST_TANH_MIN


def _tanh(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """tanh(x) into out (which may be x)."""
    if _fast_tanh(x):
        torch.add(x, x, out=out).sigmoid_()  # (x + x, not 2 * x: a scalar operand costs two tensor copies)
        return out.add_(out).sub_(1)
    return torch.tanh(x, out=out)


def _plain(W: torch.Tensor) -> torch.Tensor:
    """W itself when it or its transpose is contiguous (what BLAS and oneDNN take without a
    copy), else a contiguous copy, made once per call rather than once per step."""
    return W if W.is_contiguous() or W.t().is_contiguous() else W.contiguous()


def _weight_grad(h0: torch.Tensor, out: torch.Tensor, dA: torch.Tensor) -> torch.Tensor:
    """sum_t Hprev_t^T @ dA_t with Hprev = [h0, out[:-1]], as one big matmul (plus one small)."""
    T, B, H = out.shape
    G = dA.shape[-1]
    dnn = _use_onednn((H, T * B, G), out, dA)
    # (With oneDNN, Hprev^T is copied to contiguous by the op, and GRU's row-strided dA by _mm:
    # straight copies, ~7 ms each at 16-48 MB; transposing the strided dA instead is ~10x slower.)
    dW = _mm(dnn, h0.t(), dA[0])
    if T > 1:
        dW = _mm(dnn, out[:-1].reshape(-1, H).t(), dA[1:].reshape(-1, G), add=dW, out=dW)
    return dW


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b through the backend chosen for its shape."""
    return _mm(_use_onednn((a.shape[0], a.shape[1], b.shape[1]), a, b), a, b)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, W, b):
        ctx.matmul_dtype = _matmul_dtype
        ctx.save_for_backward(x2, W)
        ctx.has_bias = b is not None
        return _mm(True, x2, W, add=b)

    @staticmethod
    @_in_forward_precision
    @once_differentiable
    def backward(ctx, g):
        x2, W = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = _product(g, W.t()) if need_x else None
        dW = None
        if need_w:
            # x2^T @ g, or (g^T @ x2)^T when the output is the narrow side (e.g. the output
            # layer, 65 wide): oneDNN then copies the smaller g^T
            dW = _product(g.t(), x2).t() if g.shape[1] < x2.shape[1] else _product(x2.t(), g)
        db = g.sum(0) if need_b and ctx.has_bias else None
        return dx, dW, db


def linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W + b`` for x (..., I), W (I, G), b (G,) or None, e.g. the input projection of all
    time steps (``xp = linear(X, W_xh, b)``). Through oneDNN (forward and backward) for CPU
    float32 when the matmul backend allows, since there it is ~2x faster than torch.addmm's
    MKL path on AMD CPUs; elsewhere exactly ``torch.addmm``/``torch.mm`` with autograd."""
    low = _autocast_matmul_dtype(x.device.type)
    if low is not None:  # CPU autocast: bfloat16 operands, float32 result (see "bfloat16 matmuls")
        with torch.autocast("cpu", enabled=False), matmul_dtype(low):
            return linear(x.float(), W, b)
    lead = x.shape[:-1]
    I, G = W.shape
    x2 = x.reshape(-1, I)
    tensors = (x2, W) if b is None else (x2, W, b)
    if (_low(*tensors) or _use_onednn((x2.shape[0], I, G), *tensors)) and x2.shape[0] > 0:
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


# ------------------------------------------------------------------------------ CUDA: fused cells
#
# On a GPU every small elementwise op is a kernel launch of its own, a few microseconds of
# host time however little it computes: the gated steps below are ~8 such ops forward and
# ~13 backward around their one matmul, so at the sizes people train the host, not the GPU,
# sets the pace. PyTorch ships the fused CUDA kernels that torch.nn.LSTMCell and GRUCell use
# (the private ops aten::_thnn_fused_lstm_cell, _thnn_fused_gru_cell and their backwards):
# each does a whole step's gates, new state and what the backward needs in one launch, in our
# cells' gate order and form. On CUDA the GRU and LSTM scans use them, one matmul and one
# fused kernel per step each way, once a first-use self-test has checked them against the
# formulas (the *_cell_reference functions below, which say what each op computes and how its
# workspace is laid out); elsewhere, or if the test fails, the scans run the ops further down.

_FUSED = {
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
_FUSED_DEVICES = ("cuda",)
_fused_state: dict[str, bool] = {}  # device type -> result of the one-time self-test


def lstm_cell_reference(ig, hg, cx):
    """What _FUSED["lstm"] computes, in plain ops."""
    I, F, G, O = (ig + hg).chunk(4, 1)
    I, F, G, O = I.sigmoid(), F.sigmoid(), G.tanh(), O.sigmoid()
    cy = F * cx + I * G
    return O * cy.tanh(), cy, torch.cat([I, F, G, O], 1)


def lstm_cell_backward_reference(dh, dc, cx, cy, ws):
    I, F, G, O = ws.chunk(4, 1)
    tc = cy.tanh()
    dcy = dh * O * (1 - tc * tc) + (0 if dc is None else dc)
    d = torch.cat([dcy * G * I * (1 - I), dcy * cx * F * (1 - F), dcy * I * (1 - G * G), dh * tc * O * (1 - O)], 1)
    return d, dcy * F


def gru_cell_reference(ig, hg, hx):
    (xr, xz, xn), (hr, hz, hn) = ig.chunk(3, 1), hg.chunk(3, 1)
    R, Z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
    N = (xn + R * hn).tanh()
    return N + Z * (hx - N), torch.cat([R, Z, N, hx, hn], 1)


def gru_cell_backward_reference(dh, ws):
    R, Z, N, hx, hn = ws.chunk(5, 1)
    dZ = dh * (hx - N) * Z * (1 - Z)
    dN = dh * (1 - Z) * (1 - N * N)
    dR = dN * hn * R * (1 - R)
    return torch.cat([dR, dZ, dN], 1), torch.cat([dR, dZ, dN * R], 1), dh * Z


_FUSED_REFERENCES = {"lstm": lstm_cell_reference, "lstm_backward": lstm_cell_backward_reference,
                     "gru": gru_cell_reference, "gru_backward": gru_cell_backward_reference}


def _probe_fused(device: torch.device) -> bool:
    try:
        g = torch.Generator().manual_seed(0)
        B, H = 3, 5

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(device)

        cases = [("lstm", (rand(B, 4 * H), rand(B, 4 * H), rand(B, H))),
                 ("gru", (rand(B, 3 * H), rand(B, 3 * H), rand(B, H)))]
        dh, dc = rand(B, H), rand(B, H)
        with torch.no_grad():
            for name, args in cases:
                got, want = _FUSED[name](*args), _FUSED_REFERENCES[name](*args)
                if name == "lstm":
                    back = (dh, dc, args[2], want[1], want[2])
                    cases_back = [back, (dh, None, *back[2:])]
                else:
                    cases_back = [(dh, want[1])]
                pairs = list(zip(got, want))
                for b in cases_back:
                    pairs += zip(_FUSED[name + "_backward"](*b), _FUSED_REFERENCES[name + "_backward"](*b))
                if not all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in pairs):
                    return False
        return True
    except Exception:  # missing op, changed signature or workspace layout, ...
        return False


def _use_fused(*tensors: torch.Tensor) -> bool:
    """Whether a scan over these tensors uses the fused cell kernels."""
    device = tensors[0].device
    if device.type not in _FUSED_DEVICES or any(t.dtype not in (torch.float32, torch.float64) for t in tensors):
        return False
    if device.type not in _fused_state:
        _fused_state[device.type] = _probe_fused(device)
    return _fused_state[device.type]


# --------------------------------------------------------------------------------------- RNN


def _rnn_forward(xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor) -> torch.Tensor:
    T, B, H = xp.shape
    mm = _Matmul(W_hh, B, xp, h0)
    out = xp.new_empty((T, B, H))
    h = h0
    for x_t, o_t in zip(xp.unbind(0), out.unbind(0)):
        _tanh(mm(h, add=x_t, out=o_t), out=o_t)
        h = o_t
    return out


def _init_grad(g_outs, g_final: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Gradient into the last hidden state: from outputs[T-1] and/or the returned final state."""
    if g_final is None:
        return g_outs[-1] if g_outs is not None else torch.zeros_like(like)
    return g_final if g_outs is None else g_outs[-1] + g_final


class _RNNScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, h0, W_hh, tokens):
        ctx.matmul_dtype = _matmul_dtype
        out = _rnn_forward(_input(src, tokens), h0, W_hh)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h0, W_hh, out, src, tokens)
        return out, out[-1].clone()

    @staticmethod
    @_in_forward_precision
    @once_differentiable
    def backward(ctx, g_out, g_hT):
        h0, W_hh, out, src, tokens = ctx.saved_tensors
        T, B, H = out.shape
        mm = _Matmul(W_hh.t(), B, out)
        dA = torch.empty_like(out)
        dAs, outs = dA.unbind(0), out.unbind(0)
        gos = g_out.unbind(0) if g_out is not None else None
        dh = _init_grad(gos, g_hT, h0)
        scratch = torch.empty_like(dA[0])
        for t in range(T - 1, -1, -1):
            # dA_t = (1 - H_t^2) dH_t = dH_t - (dH_t H_t) H_t (with no scalar-tensor operand: a
            # 0-dim tensor in addcmul takes a ~10x slower, broadcasting loop)
            dA_t = torch.mul(dh, outs[t], out=dAs[t])
            torch.addcmul(dh, dA_t, outs[t], value=-1, out=dA_t)
            # dH_{t-1} = g_out[t-1] + dA_t @ W_hh^T
            dh = mm(dA_t, add=gos[t - 1] if t > 0 and gos is not None else None, out=scratch)
        need_x, need_h0, need_w, _ = ctx.needs_input_grad
        dW = _weight_grad(h0, out, dA) if need_w else None
        return (_input_grad(dA, src, tokens) if need_x else None), (dh if need_h0 else None), dW, None


@_float32_recurrence
def rnn_scan(xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elman RNN recurrence ``H_t = tanh(xp[t] + H_{t-1} @ W_hh)``.

    xp: (T, B, H) input projections (biases included), or a Gathered; h0: (B, H); W_hh: (H, H).
    Returns (outputs (T, B, H), hT (B, H)).
    """
    T, _, _ = _check(xp, h0, W_hh, 1)
    if T == 0:
        return xp.new_empty(xp.shape), h0.clone()
    if _needs_grad(xp, h0, W_hh):
        src, tokens = _source(xp)
        return _RNNScan.apply(src, h0, W_hh, tokens)
    with torch.no_grad():
        out = _rnn_forward(xp, h0, W_hh)
        return out, out[-1].clone()


# --------------------------------------------------------------------------------------- GRU
#
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


def _gru_forward(xp, h0, W_hh, b_hh, save: bool):
    T, B, G = xp.shape
    H = G // 3
    mm = _Matmul(W_hh, B, xp, h0, b_hh)
    if mm.dnn:
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
        if mm.dnn:
            hn.copy_(hh[:, 2 * H :])
        R = s[:, :H]
        Z = s[:, H : 2 * H]
        N = s[:, 3 * H :]
        _tanh(torch.addcmul(x_t[:, 2 * H :], R, hn, out=N), out=N)
        torch.lerp(N, h, Z, out=o_t)  # H_t = (1 - Z) * N + Z * H_{t-1} = N + Z * (H_{t-1} - N)
        h = o_t
    return out, (S if save else None)


def _gru_forward_fused(xp, h0, W_hh, b_hh, save: bool):
    """The GRU scan with one fused kernel per step (CUDA; see "fused cells" above): returns
    the outputs and, with save, each step's workspace."""
    cell, W = _FUSED["gru"], _plain(W_hh)
    h, outs, works = h0, [], []
    for x_t in xp.unbind(0):
        h, work = cell(x_t, torch.addmm(b_hh, h, W), h)
        outs.append(h)
        if save:
            works.append(work)
    return torch.stack(outs), works


def _gru_backward_fused(h0, W_hh, out, works, g_out, g_hT):
    """Backward of _gru_forward_fused: (Dx, Dh, dh0), Dx and Dh as in _GRUScan.backward."""
    T = out.shape[0]
    cell_backward, W_t = _FUSED["gru_backward"], _plain(W_hh.t())
    gos = g_out.unbind(0) if g_out is not None else None
    dh = _init_grad(gos, g_hT, h0)
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
        ctx.matmul_dtype = _matmul_dtype
        ctx.set_materialize_grads(False)
        ctx.fused = _use_fused(src, h0, W_hh)
        if ctx.fused:
            out, works = _gru_forward_fused(_input(src, tokens), h0, W_hh, b_hh, save=True)
            ctx.save_for_backward(h0, W_hh, out, src, tokens, *works)
        else:
            out, S = _gru_forward(_input(src, tokens), h0, W_hh, b_hh, save=True)
            ctx.save_for_backward(h0, W_hh, out, S, src, tokens)
        return out, out[-1].clone()

    @staticmethod
    @_in_forward_precision
    @once_differentiable
    def backward(ctx, g_out, g_hT):
        need_x, need_h0, need_w, need_b, _ = ctx.needs_input_grad
        if ctx.fused:
            h0, W_hh, out, src, tokens, *works = ctx.saved_tensors
            Dx, Dh, dh = _gru_backward_fused(h0, W_hh, out, works, g_out, g_hT)
            return ((_input_grad(Dx, src, tokens) if need_x else None), (dh if need_h0 else None),
                    (_weight_grad(h0, out, Dh) if need_w else None), (Dh.sum(dim=(0, 1)) if need_b else None), None)
        h0, W_hh, out, S, src, tokens = ctx.saved_tensors
        T, B, H = out.shape
        mm = _Matmul(W_hh.t(), B, out)
        # Everything per step, while the step's tiles are in cache (whole-sequence elementwise
        # passes over these tens-of-MB buffers cost more in memory traffic than they save in
        # op calls), in as few ops as the fused ones (addcmul, lerp) allow. Per step, with dH
        # the gradient w.r.t. H_t and H_t - N = Z (H_{t-1} - N):
        #   dN_pre = dH (1-Z)(1-N^2); dZ_pre = dH (H_{t-1}-N) Z(1-Z) = dH (1-Z)(H_t-N);
        #   dh_n = R dN_pre; dR_pre = dN_pre h_n R(1-R) = (dh_n - dh_n R) h_n;
        #   dH_{t-1} = g_out[t-1] + dH Z + [dR_pre, dZ_pre, dh_n] @ W_hh^T.
        Dh = S.new_empty((T, B, 3 * H))
        Dx = S.new_empty((T, B, 3 * H))
        gos = g_out.unbind(0) if g_out is not None else None
        dh = _init_grad(gos, g_hT, h0)
        Ss, Dhs, Dxs, outs = S.unbind(0), Dh.unbind(0), Dx.unbind(0), out.unbind(0)
        scratch = (torch.empty_like(out[0]), torch.empty_like(out[0]))
        tmp = torch.empty_like(out[0])
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

        dW = _weight_grad(h0, out, Dh) if need_w else None
        db = Dh.sum(dim=(0, 1)) if need_b else None
        return (_input_grad(Dx, src, tokens) if need_x else None), (dh if need_h0 else None), dW, db, None


@_float32_recurrence
def gru_scan(
    xp: torch.Tensor, h0: torch.Tensor, W_hh: torch.Tensor, b_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU recurrence in torch.nn.GRU's form, gate order (r, z, n).

    xp: (T, B, 3H) = X @ W_xh + b_xh, or a Gathered; h0: (B, H); W_hh: (H, 3H); b_hh: (3H,).
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
        src, tokens = _source(xp)
        return _GRUScan.apply(src, h0, W_hh, b_hh, tokens)
    with torch.no_grad():
        forward = _gru_forward_fused if _use_fused(_source(xp)[0], h0, W_hh) else _gru_forward
        out, _ = forward(xp, h0, W_hh, b_hh, save=False)
        return out, out[-1].clone()


# -------------------------------------------------------------------------------------- LSTM
#
# Saved: gate activations A (T, B, 4H) = [I, F, G, O] (the activations write straight into A
# from the step's matmul result; with BLAS that result already is A[t], so in place), cells
# C (T, B, H) and tanh(C) (T, B, H). Backward buffer D (T, B, 4H) = [dI, dF, dG, dO]
# pre-activation gradients, which is also the gradient w.r.t. xp.


def _steps(X: torch.Tensor, parts: int) -> list:
    """Per-step views of the equal column blocks of X (T, B, parts*H): parts tuples of T
    (B, H) views, made in a few C++ calls instead of slicing in Python at every step."""
    T, B, G = X.shape
    blocks = X.view(T, B, parts, G // parts)
    return [blocks[:, :, k].unbind(0) for k in range(parts)]


def _lstm_forward(xp, h0, c0, W_hh, save: bool):
    T, B, G4 = xp.shape
    H = G4 // 4
    mm = _Matmul(W_hh, B, xp, h0, c0)
    out = xp.new_empty((T, B, H))
    if save:
        A = xp.new_empty((T, B, 4 * H))
        C = xp.new_empty((T, B, H))
        TC = xp.new_empty((T, B, H))
        a_steps, c_steps, tc_steps = A.unbind(0), C.unbind(0), TC.unbind(0)
        Is, Fs, Gs, Os = _steps(A, 4)
    else:
        a = xp.new_empty((B, 4 * H))
        tc = xp.new_empty((B, H))
        cbufs = (xp.new_empty((B, H)), xp.new_empty((B, H)))
        a_steps, tc_steps = (a,) * T, (tc,) * T
        c_steps = tuple(cbufs[t & 1] for t in range(T))
        Is, Fs, Gs, Os = ((chunk,) * T for chunk in a.view(B, 4, H).unbind(1))
    # the gates: sigmoid for i, f, o and tanh for g; on the fast path one sigmoid over all
    # four blocks, with g doubled before and 2 s - 1 after (tanh(g) = 2 sigmoid(2g) - 1)
    fast = _fast_tanh(tc_steps[0])
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
        _tanh(c_t, out=tc)
        torch.mul(O, tc, out=o_t)
        h, c = o_t, c_t
    if save:
        return out, A, C, TC
    return out, None, c, None


def _lstm_forward_fused(xp, h0, c0, W_hh, save: bool):
    """The LSTM scan with one fused kernel per step (CUDA; see "fused cells" above): returns
    the outputs, the last cell state and, with save, each step's cell state and workspace."""
    cell, W = _FUSED["lstm"], _plain(W_hh)
    h, c, outs, cells, works = h0, c0, [], [], []
    for x_t in xp.unbind(0):
        h, c, work = cell(x_t, torch.mm(h, W), c)
        outs.append(h)
        if save:
            cells.append(c)
            works.append(work)
    return torch.stack(outs), c, cells, works


def _lstm_backward_fused(h0, c0, W_hh, cells, works, g_out, g_hT, g_cT):
    """Backward of _lstm_forward_fused: (D, dh0, dc0), D as in _LSTMScan.backward."""
    T = len(cells)
    cell_backward, W_t = _FUSED["lstm_backward"], _plain(W_hh.t())
    gos = g_out.unbind(0) if g_out is not None else None
    dh, dc = _init_grad(gos, g_hT, h0), g_cT
    D = [None] * T
    for t in range(T - 1, -1, -1):
        D[t], dc = cell_backward(dh, dc, cells[t - 1] if t else c0, cells[t], works[t])
        dh = torch.addmm(gos[t - 1], D[t], W_t) if t > 0 and gos is not None else torch.mm(D[t], W_t)
    return torch.stack(D), dh, dc


class _LSTMScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, h0, c0, W_hh, tokens):
        ctx.matmul_dtype = _matmul_dtype
        ctx.set_materialize_grads(False)
        ctx.fused = _use_fused(src, h0, c0, W_hh)
        if ctx.fused:
            out, cT, cells, works = _lstm_forward_fused(_input(src, tokens), h0, c0, W_hh, save=True)
            ctx.save_for_backward(h0, c0, W_hh, out, src, tokens, *cells, *works)
            return out, out[-1].clone(), cT.clone()
        out, A, C, TC = _lstm_forward(_input(src, tokens), h0, c0, W_hh, save=True)
        ctx.save_for_backward(h0, c0, W_hh, out, A, C, TC, src, tokens)
        return out, out[-1].clone(), C[-1].clone()

    @staticmethod
    @_in_forward_precision
    @once_differentiable
    def backward(ctx, g_out, g_hT, g_cT):
        need_x, need_h0, need_c0, need_w, _ = ctx.needs_input_grad
        if ctx.fused:
            h0, c0, W_hh, out, src, tokens, *rest = ctx.saved_tensors
            T = out.shape[0]
            D, dh, dc = _lstm_backward_fused(h0, c0, W_hh, rest[:T], rest[T:], g_out, g_hT, g_cT)
            return ((_input_grad(D, src, tokens) if need_x else None), (dh if need_h0 else None),
                    (dc if need_c0 else None), (_weight_grad(h0, out, D) if need_w else None), None)
        h0, c0, W_hh, out, A, C, TC, src, tokens = ctx.saved_tensors
        T, B, H = out.shape
        mm = _Matmul(W_hh.t(), B, out)
        # Per step (see the GRU's note), with dH, dC_carry the gradients from above, and
        # H_t = O tanh(C), U = I G:
        #   dC = dC_carry + dH O (1 - tanh(C)^2) = dC_carry + dH (O - H_t tanh(C));
        #   dO_pre = dH tanh(C) O(1-O) = dH (H_t - H_t O);
        #   dI_pre = dC G I(1-I) = dC (U - U I);  dG_pre = dC I (1-G^2) = dC (I - U G);
        #   dF_pre = dC Cprev F(1-F);  dC_carry' = dC F;
        #   dH_{t-1} = g_out[t-1] + [dI, dF, dG, dO] @ W_hh^T.
        D = A.new_empty((T, B, 4 * H))
        gos = g_out.unbind(0) if g_out is not None else (None,) * T
        dh = _init_grad(None if g_out is None else gos, g_hT, h0)
        dc_carry = g_cT if g_cT is not None else torch.zeros_like(c0)
        # per-step views, made once (see _steps): step t reads cprevs[t], adds ahead[t]
        Is, Fs, Gs, Os = _steps(A, 4)
        dIs, dFs, dGs, dOs = _steps(D, 4)
        dIFGs = D[..., : 3 * H].view(T, B, 3, H).unbind(0)
        cprevs = (c0,) + C.unbind(0)[:-1]
        ahead = (None,) + gos[:-1]
        dc = torch.empty_like(out[0])
        dc3 = dc.unsqueeze(1)
        tmp = torch.empty_like(out[0])
        carry = (torch.empty_like(out[0]), torch.empty_like(out[0]))
        dh_buf = torch.empty_like(out[0])
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

        dW = _weight_grad(h0, out, D) if need_w else None
        return ((_input_grad(D, src, tokens) if need_x else None), (dh if need_h0 else None),
                (dc_carry if need_c0 else None), dW, None)


@_float32_recurrence
def lstm_scan(
    xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, W_hh: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LSTM recurrence, gate order (i, f, g, o) as in torch.nn.LSTM.

    xp: (T, B, 4H) input projections including ALL biases, or a Gathered; h0, c0: (B, H);
    W_hh: (H, 4H).
    g4 = xp[t] + H_{t-1} @ W_hh; I, F, O = sigmoid; G = tanh;
    C_t = F * C_{t-1} + I * G; H_t = O * tanh(C_t). Returns (outputs (T, B, H), hT, cT).
    """
    T, _, _ = _check(xp, h0, W_hh, 4)
    if c0.shape != h0.shape:
        raise ValueError(f"c0 must have h0's shape {tuple(h0.shape)}, got {tuple(c0.shape)}")
    if T == 0:
        return xp.new_empty((0,) + tuple(h0.shape)), h0.clone(), c0.clone()
    if _needs_grad(xp, h0, c0, W_hh):
        src, tokens = _source(xp)
        return _LSTMScan.apply(src, h0, c0, W_hh, tokens)
    with torch.no_grad():
        if _use_fused(_source(xp)[0], h0, c0, W_hh):
            out, cT, _, _ = _lstm_forward_fused(xp, h0, c0, W_hh, save=False)
            return out, out[-1].clone(), cT.clone()
        out, _, cT, _ = _lstm_forward(xp, h0, c0, W_hh, save=False)
        return out, out[-1].clone(), cT.clone()
