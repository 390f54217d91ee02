"""Wall clocks and paired rounds, and what the machine is (CPU, instruction set, load)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch


class Clock:
    """Wall time of a callable on the chosen device (CUDA: events, synchronised)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def paired_rounds(clock: Clock, fns: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Times of every fn per round; within a round the fns run back to back."""
    for _ in range(warmup):
        for fn in fns.values():
            clock(fn)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(clock(fn))
    return times


def med(xs):
    return statistics.median(xs)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_avx512() -> bool:
    """Whether this CPU has AVX-512 (Linux's /proc/cpuinfo lists avx512f)."""
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def cpu_capability() -> str:
    """The vector instruction set PyTorch's own CPU kernels run (after ATEN_CPU_CAPABILITY)."""
    return torch.backends.cpu.get_cpu_capability()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"
