"""Each part of a bench section, measured and printed as a Markdown table: the matmul peak
(and, under an instruction-set cap, how it compares with the native one), training, sampling
and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench_lib.memory import measure_memory
from bench_lib.timing import Clock, cpu_capability, med, paired_rounds
from bench_lib.workloads import (bench_eval, bench_sampling, gemm_peak, implementations, make_matmul_step,
                                 make_train_step, read_val_ids, train_flops)
from charrnn.training.train_step import TrainStep


@dataclass
class Setup:
    """What every part of a section measures with (from the command line)."""

    device: torch.device
    sizes: list[tuple[int, int, int]]  # (hidden, batch, seq)
    cells: list[str]
    repeats: int
    warmup: int
    quick: bool
    precision: str  # "float32" or "TF32 matmuls"

    @property
    def clock(self) -> Clock:
        return Clock(self.device)

    @property
    def hiddens(self) -> list[int]:
        return sorted({h for h, _, _ in self.sizes})


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


# ------------------------------------------------------------------------------ matmul peak


def peak_part(setup: Setup) -> tuple[dict[int, float], dict[str, float]]:
    """Print the peak table; return the peak per hidden size and the best GFLOP/s per backend."""
    shapes = []
    for h, b, t in setup.sizes:
        shapes += [(b, h, 4 * h), (b * t, h, 4 * h)]
    rows = gemm_peak(list(dict.fromkeys(shapes)), setup.device, setup.clock, max(3, setup.repeats))
    backends = [k for k in rows[0] if k != "shape"]
    peak = {h: max(r[k] for r in rows if r["shape"][1] == h for k in backends) for h in setup.hiddens}
    print(f"#### {setup.precision} matmul peak (GFLOP/s, best round)\n")
    print("| M x K x N | " + " | ".join(backends) + " |")
    print("|---|" + "---:|" * len(backends))
    for r in rows:
        print(f"| {' x '.join(map(str, r['shape']))} | " + " | ".join(f"{r[k]:.0f}" for k in backends) + " |")
    print("\npeak (best of the above per hidden size): " + ", ".join(f"H={h}: {peak[h]:.0f} GFLOP/s"
                                                                     for h in setup.hiddens) + "\n", flush=True)
    return peak, {k: max(r[k] for r in rows) for k in backends}


def cap_check(best: dict[str, float], native: dict | None) -> str:
    """A line saying whether an instruction-set cap took effect: torch's own kernels (their
    capability) and each matmul library (its best GFLOP/s against the native section's)."""
    capability = cpu_capability()
    if not native:
        return f"the cap: torch's CPU capability {capability}; no native section in this run to compare the peak with"
    ratios = {k: v / native["best"][k] for k, v in best.items() if native["best"].get(k)}
    said = ", ".join(f"{k} {r:.2f}x" for k, r in ratios.items())
    unmoved = [k for k, r in ratios.items() if r >= 0.9]  # within noise of the native peak, or faster
    findings = []
    if capability == native["capability"]:
        findings.append("torch's own kernels kept their instruction set")
    if unmoved:
        findings.append(f"{' and '.join(unmoved)} kept {'its' if len(unmoved) == 1 else 'their'} speed (the cap did "
                        "not reach it, or this CPU's AVX-512 is no faster than its AVX2)")
    return (f"the cap: torch's CPU capability {capability} (native: {native['capability']}); best matmul against "
            f"the native section's: {said}; {'; '.join(findings) or 'the cap took effect'}")


# ------------------------------------------------------------------------------ training


TRAIN_HEADER = (
    "| hidden | batch | seq | cell | charrnn chars/s (best) | torch.nn chars/s (best) | charrnn / torch.nn (bests) "
    "| charrnn GFLOP/s | % of peak | torch.nn GFLOP/s | % of peak | step memory charrnn / torch.nn "
    "| charrnn step ms | its matmuls ms | not matmul ms (% of step) |\n"
    "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def training_part(setup: Setup, peak: dict[int, float], memory: bool) -> None:
    """Print the training table (and on CUDA the eager-and-graphed one)."""
    sizes, cells, device = setup.sizes, setup.cells, setup.device
    mem = {}
    if memory:
        specs = [f"{impl},{cell},{h},{b},{t}" for h, b, t in sizes for cell in cells for impl in ("charrnn", "torch")]
        mem = measure_memory(specs, device, torch.get_num_threads())
    print("#### Training (forward, cross-entropy, backward, clip, SGD step)\n")
    print(TRAIN_HEADER)
    others = []  # CUDA: the rows of the eager-and-graphed table
    for h, b, t in sizes:
        for cell in cells:
            fns = {name: make_train_step(impl, cell, h, b, t, device, graphs=graphs)
                   for name, (impl, graphs) in implementations(device).items()}
            fns["matmuls"] = make_matmul_step(cell, h, b, t, device)
            # TrainStep's eager warm-up before its capture does not count
            times = paired_rounds(setup.clock, fns, max(setup.warmup, TrainStep.WARMUP + 1), setup.repeats)
            memory_cell = _memory_cell(*(mem.get(f"{impl},{cell},{h},{b},{t}", -1) for impl in ("charrnn", "torch")))
            print(_training_row(h, b, t, cell, times, peak[h], memory_cell), flush=True)
            if device.type == "cuda":
                others.append((h, b, t, cell, {name: b * t / med(ts) for name, ts in times.items()}))
            del fns
    print()
    if others:
        _graphs_table(others)


def _memory_cell(charrnn_bytes: int, torch_bytes: int) -> str:
    if charrnn_bytes < 0 or torch_bytes < 0:
        return "n/a"
    return f"{charrnn_bytes / 2**20:.0f} / {torch_bytes / 2**20:.0f} MB"


def _training_row(h, b, t, cell, times: dict[str, list[float]], peak: float, memory: str) -> str:
    ratio = med([tt / tc for tc, tt in zip(times["charrnn"], times["torch"])])
    best_ratio = min(times["torch"]) / min(times["charrnn"])
    rate, gflops = {}, {}
    for impl in ("charrnn", "torch"):
        tm = med(times[impl])
        rate[impl] = f"{fmt_rate(b * t / tm)} ({fmt_rate(b * t / min(times[impl]))})"
        flops = train_flops(impl, cell, h, b, t) / tm / 1e9
        gflops[impl] = f"{flops:.0f} | {100 * flops / peak:.0f}%"
    step, matmuls = 1e3 * med(times["charrnn"]), 1e3 * med(times["matmuls"])
    return (f"| {h} | {b} | {t} | {cell.upper()} | {rate['charrnn']} | {rate['torch']} | {ratio:.2f}x "
            f"({best_ratio:.2f}x) | {gflops['charrnn']} | {gflops['torch']} | {memory} | {fmt_ms(step)} | "
            f"{fmt_ms(matmuls)} | {fmt_ms(step - matmuls)} ({100 * (step - matmuls) / step:.0f}%) |")


def _graphs_table(rows) -> None:
    print("#### Training on CUDA, eager and replayed as a CUDA graph (chars/s, medians)\n")
    print("| hidden | batch | seq | cell | charrnn graphed (default) | charrnn eager | torch.nn eager | "
          "torch.nn graphed | charrnn graphed / torch.nn graphed |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for h, b, t, cell, r in rows:
        print(f"| {h} | {b} | {t} | {cell.upper()} | {fmt_rate(r['charrnn'])} | {fmt_rate(r['charrnn eager'])} | "
              f"{fmt_rate(r['torch'])} | {fmt_rate(r['torch graphed'])} | {r['charrnn'] / r['torch graphed']:.2f}x |")
    print()


# ------------------------------------------------------------------------------ sampling, eval


def sampling_part(setup: Setup, H: int) -> None:
    print(f"#### Sampling (charrnn.generation.sample.generate, hidden {H})\n")
    print("| cell | 1 sequence, 1 thread: chars/s (best) | W_hh product alone: chars/s | 1 sequence / that bound "
          "| 16 sequences: chars/s (best), threads |")
    print("|---|---:|---:|---:|---:|")
    repeats = 2 if setup.quick else max(3, setup.repeats // 2)
    for r in bench_sampling(H, setup.device, setup.clock, setup.quick, repeats, setup.cells):
        one, bound, six = r["one"], r["bound"], r["sixteen"]
        print(f"| {r['cell'].upper()} | {fmt_rate(one[0])} ({fmt_rate(one[1])}) | {fmt_rate(bound)} | "
              f"{100 * one[0] / bound:.0f}% | {fmt_rate(six[0])} ({fmt_rate(six[1])}), {six[2]} "
              f"thread{'s' if six[2] > 1 else ''} |", flush=True)
    print()


def eval_part(setup: Setup, H: int, data: Path, peak: dict[int, float]) -> None:
    if not data.is_file():
        print(f"#### Evaluation: skipped, {data} is absent (give --data PATH to tinyshakespeare.txt)\n")
        return
    ids, vocab_size = read_val_ids(data)
    B, T = next(((b, t) for h, b, t in setup.sizes if h == H), (64, 128))
    if setup.quick:
        ids = ids[: 20 * B * T + 1]
    hp = peak.get(H) or max(peak.values())
    print(f"#### Evaluation (charrnn.scoring.evaluation.evaluate, hidden {H}, {B} streams of {T}; "
          f"{len(ids) - 1:,} characters of tinyshakespeare's validation split)\n")
    print("| cell | chars/s (best) | GFLOP/s | % of peak |")
    print("|---|---:|---:|---:|")
    rows = bench_eval(H, B, T, ids, vocab_size, setup.device, setup.clock, 2 if setup.quick else 3, hp, setup.cells)
    for r in rows:
        print(f"| {r['cell'].upper()} | {fmt_rate(r['chars'])} ({fmt_rate(r['best'])}) | {r['gflops']:.0f} | "
              f"{100 * r['gflops'] / r['peak']:.0f}% |", flush=True)
    print()
