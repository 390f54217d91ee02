"""glibc malloc settings for training on a CPU: recycle the scans' big buffers instead of
page-faulting them in anew on every call.

A scan's buffers of (T, B, gates*H) floats are tens of MB. glibc serves allocations above
its mmap threshold (dynamic: it rises from 128 KiB as mmapped blocks are freed, but only up
to 32 MiB) with a fresh mmap and unmaps them on free, so every call page-faults its buffers
in anew, which costs a sizeable share of a training step's time (docs/performance.md has the
measurement). Setting M_MMAP_THRESHOLD to 32 MiB changes nothing (the 64-128 MiB gate
buffers still exceed it); setting it to 1 GiB, or M_MMAP_MAX = 0, together with a large
M_TRIM_THRESHOLD, removes all of the faults: the buffers are recycled from the heap.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["tune_allocator"]

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
