"""The CPU float32 matmuls of the scans, the projections and the sampler: each through
torch.mm (MKL's BLAS) or oneDNN, whichever is faster for its shape. For other devices and
dtypes (CUDA, the float64 tests) every function here is exactly torch.mm/addmm.

torch.mm on a CPU calls MKL's sgemm; PyTorch also exposes oneDNN's fp32 GEMM (what
torch.nn.LSTM's CPU path uses) through the private, Inductor-facing op
torch.ops.mkldnn._linear_pointwise. Which is faster depends on the CPU and on the shape: MKL
takes a generic code path on AMD CPUs, where oneDNN is much faster; on Intel CPUs MKL wins
most shapes, and each library has shapes where it loses (docs/performance.md). So with the
"auto" backend each CPU float32 matmul shape is timed through both, once per process, the
first time it is needed, and goes to the faster one (oneDNN only after a self-test of the op
passes; below a size where one call's fixed cost dominates, BLAS without timing). A run
records the choices in its checkpoints and adopts them when it resumes (gemm_choices /
adopt_gemm_choices), so a resumed run computes exactly as before. oneDNN allocates its
output (no out=), so each step's result is consumed by an operation that writes into the
scan's preallocated buffers, which costs no extra copy.

Under cpu_bfloat16.matmul_dtype (training with --amp bf16) every matmul here takes bfloat16
operands instead.
"""

from __future__ import annotations

import math
import time

import torch
from torch.autograd.function import once_differentiable

from charrnn.kernels import cpu_bfloat16

__all__ = ["set_gemm_backend", "onednn_usable", "use_onednn", "gemm_choices", "adopt_gemm_choices", "Matmul",
           "matmul", "product", "linear", "gemm_operand"]

GEMM_BACKENDS = ("auto", "blas", "onednn")
ONEDNN_MIN_MACS = 1 << 21  # multiply-adds per matmul; below it BLAS, untimed (oneDNN's per-call cost)
PACKED_MIN_MACS = 1 << 20  # the same with the weight packed once (see Matmul)
ONEDNN_MIN_GAIN = 1.05  # oneDNN is taken when it is this much faster: near-ties stay on BLAS

_gemm_backend = "auto"
_onednn_state: bool | None = None  # result of the one-time self-test
_choices: dict[tuple, bool] = {}  # (M, K, N, packed, threads) -> whether oneDNN is the faster


def set_gemm_backend(name: str) -> str:
    """Choose the matmul used for CPU float32: "auto" (default: per shape, the faster of BLAS
    and oneDNN, timed once; BLAS when oneDNN fails its self-test), "blas" (always
    torch.mm/addmm) or "onednn" (raises RuntimeError when unavailable). Returns the previous
    setting. Other devices and dtypes always use torch.mm/addmm."""
    global _gemm_backend
    if name not in GEMM_BACKENDS:
        raise ValueError(f"gemm backend must be one of {GEMM_BACKENDS}, got {name!r}")
    if name == "onednn" and not onednn_usable():
        raise RuntimeError("oneDNN matmul (torch.ops.mkldnn._linear_pointwise) is not usable in this torch build")
    prev, _gemm_backend = _gemm_backend, name
    return prev


def onednn_usable() -> bool:
    """Whether this torch build's oneDNN matmul passed its self-test (run once, at first use)."""
    global _onednn_state
    if _onednn_state is None:
        _onednn_state = _probe_onednn()
    return _onednn_state


def use_onednn(shape: tuple[int, int, int], *tensors: torch.Tensor, packed: bool = False) -> bool:
    """Whether an (M, K) @ (K, N) matmul on these tensors goes through oneDNN."""
    M, K, N = shape
    if _gemm_backend == "blas" or (_gemm_backend == "auto" and M * K * N < (PACKED_MIN_MACS if packed else ONEDNN_MIN_MACS)):
        return False
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != torch.float32 or t.layout != torch.strided:
            return False
    if not (torch.backends.mkldnn.enabled and onednn_usable()):
        return False
    return _gemm_backend == "onednn" or _onednn_faster(M, K, N, packed)


def _packed_low_usable(low: torch.dtype) -> bool:
    """Whether a weight of dtype ``low`` (bfloat16) can be packed once for oneDNN."""
    return (low == torch.bfloat16 and _gemm_backend != "blas" and torch.backends.mkldnn.enabled and onednn_usable()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def gemm_choices() -> list[list]:
    """The backend chosen for each matmul shape timed so far, as plain lists (for a
    checkpoint): [M, K, N, packed, threads, whether oneDNN]."""
    return [[*key, onednn] for key, onednn in _choices.items()]


def adopt_gemm_choices(choices: list) -> None:
    """Take a resumed run's recorded choices instead of timing those shapes anew."""
    for *key, onednn in choices:
        _choices[tuple(key)] = bool(onednn)


def _onednn_faster(M: int, K: int, N: int, packed: bool) -> bool:
    key = (M, K, N, packed, torch.get_num_threads())
    if key not in _choices:
        _choices[key] = _time_backends(M, K, N, packed)
    return _choices[key]


def _time_backends(M: int, K: int, N: int, packed: bool) -> bool:
    """Whether oneDNN computes an (M, K) @ (K, N) product ONEDNN_MIN_GAIN times faster than
    torch.mm: best of four timings of each, taking turns, of ~40 M multiply-adds each."""
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
    return best["onednn"] * ONEDNN_MIN_GAIN < best["blas"]


# ------------------------------------------------------------------------------ the products


class Matmul:
    """``add + a @ W`` for one weight W (K, N) used again and again on ``rows`` x K inputs:
    a scan's per-step product, or the sampler's. Through oneDNN (when ``use_onednn`` allows)
    with W reordered once, when the scan starts, into the blocked layout oneDNN's kernel
    reads ("packed"; a plain weight is reordered inside every call), which puts it ahead of
    MKL on smaller products (a single row, a matrix-vector product, stays with BLAS). Else
    torch.mm/addmm, into ``out`` when given (``add`` may alias ``out``); oneDNN returns a new
    tensor and ignores ``out``. Under bfloat16 operands, W is cast once here, and packed for
    oneDNN unless BLAS was chosen (torch.mm's bfloat16 product is oneDNN's, reordering W
    inside every call)."""

    def __init__(self, W: torch.Tensor, rows: int, *others: torch.Tensor):
        K, N = W.shape
        self.low = cpu_bfloat16.operand_dtype(W, *others)
        if self.low is not None:  # cast (and packed) once per scan, not once per step
            self.onednn = _packed_low_usable(self.low)
            W = W.to(self.low)
        else:
            self.onednn = rows > 1 and use_onednn((rows, K, N), W, *others, packed=True)
        if self.onednn:
            self.W = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), rows)
        else:
            self.W = W if self.low is not None else gemm_operand(W)

    def __call__(self, a: torch.Tensor, add: torch.Tensor | None = None, out=None) -> torch.Tensor:
        if self.low is not None and self.onednn:
            return cpu_bfloat16.add_product(_onednn_linear(a.to(self.low), self.W, None), add, out)
        if self.low is not None:
            return cpu_bfloat16.addmm(self.low, a, self.W, add, out)
        if self.onednn:
            return _onednn_linear(a, self.W, add)
        return _blas(a, self.W, add, out)


def matmul(a: torch.Tensor, b: torch.Tensor, add: torch.Tensor | None = None, out=None,
           onednn: bool = False) -> torch.Tensor:
    """``add + a @ b`` (``add`` broadcast: a (N,) bias or an (M, N) matrix).

    BLAS: computed into ``out`` when given (``add`` may alias ``out``). oneDNN: returns a new
    tensor and ignores ``out``. Under bfloat16 operands, that product (into ``out``)."""
    low = cpu_bfloat16.operand_dtype(a, b)
    if low is not None:
        return cpu_bfloat16.addmm(low, a, b, add, out)
    if not onednn:
        return _blas(a, b, add, out)
    if not (b.is_contiguous() or b.t().is_contiguous()):
        b = b.contiguous()  # oneDNN runs a slow reference kernel on other weight strides
    return _onednn_linear(a, b.t(), add)  # oneDNN's linear computes a @ w^T with w (N, K)


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b through the backend chosen for its shape."""
    return matmul(a, b, onednn=use_onednn((a.shape[0], a.shape[1], b.shape[1]), a, b))


def gemm_operand(W: torch.Tensor) -> torch.Tensor:
    """W itself when it or its transpose is contiguous (what BLAS and oneDNN take without a
    copy), else a contiguous copy, made once per call rather than once per step."""
    return W if W.is_contiguous() or W.t().is_contiguous() else W.contiguous()


def _blas(a, b, add, out) -> torch.Tensor:
    if add is None:
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    return torch.addmm(add, a, b) if out is None else torch.addmm(add, a, b, out=out)


def _onednn_linear(a, w, add) -> torch.Tensor:
    """``add + a @ w^T`` through oneDNN, for w (N, K) plain or packed."""
    lp = torch.ops.mkldnn._linear_pointwise
    if add is None:
        return lp(a, w, None, "none", [], "")
    if add.dim() == 1:
        return lp(a, w, add.contiguous(), "none", [], "")
    if add.is_contiguous():
        return lp.binary(a, add, w, None, "add")
    return lp(a, w, None, "none", [], "").add_(add)


# ------------------------------------------------------------------------------ linear


def linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W + b`` for x (..., I), W (I, G), b (G,) or None, e.g. the input projection of all
    time steps (``xp = linear(X, W_xh, b)``) or the output layer. Through oneDNN (forward and
    backward) for CPU float32 when the matmul backend allows, with bfloat16 operands under
    CPU autocast; elsewhere exactly ``torch.addmm``/``torch.mm`` with autograd."""
    low = cpu_bfloat16.autocast_dtype(x.device.type)
    if low is not None:  # CPU autocast: bfloat16 operands, float32 result (charrnn/kernels/cpu_bfloat16.py)
        with torch.autocast("cpu", enabled=False), cpu_bfloat16.matmul_dtype(low):
            return linear(x.float(), W, b)
    lead = x.shape[:-1]
    I, G = W.shape
    x2 = x.reshape(-1, I)
    tensors = (x2, W) if b is None else (x2, W, b)
    if (cpu_bfloat16.operand_dtype(*tensors) or use_onednn((x2.shape[0], I, G), *tensors)) and x2.shape[0] > 0:
        W = gemm_operand(W)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            y = _Linear.apply(x2, W, b)
        else:
            with torch.no_grad():
                y = matmul(x2, W, add=b, onednn=True)
    else:
        y = torch.mm(x2, W) if b is None else torch.addmm(b, x2, W)
    return y.reshape(*lead, G)


class _Linear(torch.autograd.Function):
    """``x2 @ W + b`` through oneDNN (or bfloat16 operands), its backward per shape."""

    @staticmethod
    def forward(ctx, x2, W, b):
        ctx.matmul_dtype = cpu_bfloat16.active_dtype()
        ctx.save_for_backward(x2, W)
        ctx.has_bias = b is not None
        return matmul(x2, W, add=b, onednn=True)

    @staticmethod
    @cpu_bfloat16.in_forward_precision
    @once_differentiable
    def backward(ctx, g):
        x2, W = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = product(g, W.t()) if need_x else None
        dW = None
        if need_w:
            # x2^T @ g, or (g^T @ x2)^T when the output is the narrow side (e.g. the output
            # layer, vocabulary-wide): oneDNN then copies the smaller g^T
            dW = product(g.t(), x2).t() if g.shape[1] < x2.shape[1] else product(x2.t(), g)
        db = g.sum(0) if need_b and ctx.has_bias else None
        return dx, dW, db


# ------------------------------------------------------------------------------ self-test


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
