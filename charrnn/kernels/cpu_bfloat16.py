"""bfloat16 matmul operands on a CPU: what training with --amp bf16 changes in the scans and
in linear().

On a CPU with bfloat16 matrix instructions (AMX, AVX512-BF16) oneDNN's bfloat16 GEMM is
several times its float32 one (docs/performance.md). Under CPU autocast to bfloat16 the
scans and linear() give their matmuls bfloat16 operands and keep everything else in
float32: the carried state, the gates' arithmetic, the sums with the input side, the weights
and the gradients they accumulate. Each product is rounded to bfloat16 once, at its output;
no state is ever stored in bfloat16. A scan's backward runs in the precision its forward ran
in: each autograd Function records `active_dtype()` in its forward, and its backward is
wrapped in `in_forward_precision`.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

__all__ = ["matmul_dtype", "active_dtype", "autocast_dtype", "autocast_enabled", "operand_dtype", "addmm", "add_product",
           "in_forward_precision", "bfloat16_pays"]

BFLOAT16_MIN_GAIN = 1.5  # --amp auto takes bfloat16 where its GEMM is this much faster

_matmul_dtype: torch.dtype | None = None  # None: every matmul in its operands' own dtype


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


def active_dtype() -> torch.dtype | None:
    """The operand dtype matmul_dtype set for the current block (None: none set)."""
    return _matmul_dtype


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """torch.bfloat16 under CPU autocast to bfloat16, else None: the operand dtype a scan or
    linear() called here switches to."""
    if device_type == "cpu" and autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return torch.bfloat16
    return None


def autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def operand_dtype(*tensors: torch.Tensor) -> torch.dtype | None:
    """The dtype a matmul of these tensors takes its operands in, if not their own (None)."""
    if _matmul_dtype is None:
        return None
    ok = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    return _matmul_dtype if ok else None


def addmm(low: torch.dtype, a: torch.Tensor, b: torch.Tensor, add=None, out=None) -> torch.Tensor:
    """``add + a @ b`` with the product's operands in ``low``; the result in float32 (into
    ``out`` when given)."""
    return add_product(torch.mm(a.to(low), b.to(low)), add, out)


def add_product(product: torch.Tensor, add=None, out=None) -> torch.Tensor:
    """``add + product`` for a low-precision product, in float32 (into ``out`` when given)."""
    if add is None:
        return product.float() if out is None else out.copy_(product)
    return torch.add(add, product) if out is None else torch.add(add, product, out=out)


def in_forward_precision(backward):
    """Runs an autograd Function's backward with the matmul dtype its forward recorded in
    ``ctx.matmul_dtype``."""

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with matmul_dtype(ctx.matmul_dtype):
            return backward(ctx, *grads)

    return wrapper


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
