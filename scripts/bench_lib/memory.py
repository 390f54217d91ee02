"""A training step's memory: on a CPU the growth of the resident set, each configuration in
a fresh process (a fork of a helper process that has imported torch and charrnn and computed
nothing); on CUDA max_memory_allocated. See scripts/bench.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from bench_lib.internals import charrnn_internals
from bench_lib.workloads import make_train_step

BENCH = Path(__file__).resolve().parents[1] / "bench.py"  # its --memory-probe runs memory_probe_main
ROOT = BENCH.parents[1]


def measure_memory(specs, device, threads) -> dict[str, int]:
    """spec "impl,cell,H,B,T" -> bytes a training step takes (missing where not measured)."""
    if device.type == "cuda":
        return {spec: _cuda_growth(spec, device) for spec in specs}
    if not hasattr(os, "fork") or not Path("/proc/self/status").exists():
        return {}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(BENCH), "--memory-probe", *specs], capture_output=True, text=True,
                          env=env, timeout=600)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        print(f"(memory probe failed: {proc.stderr.strip()[-300:]})")
        return {}


def _cuda_growth(spec: str, device) -> int:
    impl, cell, H, B, T = spec.split(",")
    step = make_train_step(impl, cell, int(H), int(B), int(T), device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    step()
    torch.cuda.synchronize()
    grown = torch.cuda.max_memory_allocated() - before
    del step
    torch.cuda.empty_cache()
    return grown


def memory_probe_main(specs: list[str]) -> None:
    """Helper process: for each spec (impl,cell,H,B,T) fork a fresh child that runs two
    training steps and reports the growth of its resident set; print one JSON line."""
    # an optimizer's first step imports a lot lazily (~0.7 s): do that once here, where it
    # computes nothing (no grad), so that no child pays for it and no thread pool exists yet
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1).step()
    results = {}
    for spec in specs:
        impl, cell, H, B, T = spec.split(",")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: measure, report, exit without cleanup
            os.close(read)
            try:
                value = _rss_growth(impl, cell, int(H), int(B), int(T))
            except Exception:  # noqa: BLE001 - reported as missing
                value = -1
            os.write(write, str(value).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            text = f.read()
        os.waitpid(pid, 0)
        results[spec] = int(text) if text.strip().lstrip("-").isdigit() else -1
    print(json.dumps(results))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _rss_growth(impl, cell, H, B, T) -> int:
    """Bytes the resident set grows by during the first two training steps."""
    import resource

    charrnn_internals().tune_allocator()  # as training does
    step = make_train_step(impl, cell, H, B, T, torch.device("cpu"))
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
    except OSError:
        pass
    try:
        before = _status_kb("VmRSS")
    except (OSError, KeyError):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    try:
        peak = _status_kb("VmHWM")
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(0, peak - before) * 1024
