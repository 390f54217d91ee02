"""Quick CPU benchmark of the cells' scans: forward + backward of one recurrent layer.

For each cell (RNN, GRU, LSTM) it times, in the same process and taking turns,
  ref      - the plain autograd loop over the recurrence (the cell's `loop`, its `step`
             under autograd),
  scan     - the cell's scan (charrnn/cells/rnn.py, ...) with its hand-written backward
             (default matmul backend: oneDNN for CPU float32 when available),
  blas     - the same scan with its matmuls forced to torch.mm/addmm (MKL here),
  scan+lin - the scan, with the input projection also through cpu_matmul.linear (oneDNN),
  torch    - torch.nn.RNN / GRU / LSTM (one layer, seq-first),
all computing the same function: xp = X @ W_xh + b (torch.addmm except in scan+lin), then the
recurrence, with gradients flowing into the outputs and the final state(s), w.r.t. X, the
weights, biases and h0 (c0). Prints ms per iteration (median and min of --repeats after
--warmup), chars/s (= B*T / median time) and each time over the scan's (t/t_scan > 1: the
scan is faster). Calls tune_allocator() first unless --no-tune-allocator. Keep the
defaults small: the whole run should take < 90 s.

    python scripts/bench_bptt.py [--hidden 512 --batch 64 --seq 128 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from charrnn import cpu_matmul  # noqa: E402
from charrnn.kernels.allocator import tune_allocator  # noqa: E402
from charrnn.cells import cell_class  # noqa: E402

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def make_step(cell, impl, T, B, I, H):
    g = torch.Generator().manual_seed(0)
    G = GATES[cell] * H
    X = torch.randn(T, B, I, generator=g).requires_grad_()
    states = [(0.5 * torch.randn(B, H, generator=g)).requires_grad_() for _ in range(2 if cell == "lstm" else 1)]
    grads = [torch.randn(T, B, H, generator=g)] + [torch.randn(B, H, generator=g) for _ in states]

    if impl == "torch":
        mod = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell](I, H)
        hx = tuple(s.unsqueeze(0) for s in states)

        def step():
            y, hT = mod(X, hx if cell == "lstm" else hx[0])
            finals = list(hT) if cell == "lstm" else [hT]
            torch.autograd.backward([y] + [f[0] for f in finals], grads)

        return step

    layer = cell_class(cell)(I, H)
    with torch.no_grad():  # the scales of a trained layer, rather than the book's tiny init
        layer.W_xh.copy_(torch.randn(I, G, generator=g) / I**0.5)
        layer.W_hh.copy_(torch.randn(H, G, generator=g) / H**0.5)
    state = states[0] if cell != "lstm" else tuple(states)

    def step():
        prev = cpu_matmul.set_gemm_backend("blas" if impl == "blas" else "auto")
        try:
            run()
        finally:
            cpu_matmul.set_gemm_backend(prev)

    def run():
        if impl == "scan+lin":
            xp = cpu_matmul.linear(X, layer.W_xh, layer.input_bias())
        else:
            xp = torch.addmm(layer.input_bias(), X.view(T * B, I), layer.W_xh).view(T, B, G)
        # the reference: the cell's step under autograd, step by step; else its scan
        outputs, final = (layer.loop if impl == "ref" else layer.recur)(xp, state)
        torch.autograd.backward([outputs, *(final if cell == "lstm" else (final,))], grads)

    return step


def time_round_robin(steps, warmup, repeats):
    """Per impl (median, min) seconds; the impls take turns within each repeat, so that a
    burst of load from elsewhere on the machine spreads over all of them rather than one."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    ts = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            ts[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(v), min(v)) for name, v in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--input", type=int, default=128, help="input (embedding) size of X")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cells", default="rnn,gru,lstm")
    ap.add_argument("--impls", default="ref,scan,blas,scan+lin,torch")
    ap.add_argument("--no-tune-allocator", action="store_true",
                    help="leave glibc malloc as it is (by default tune_allocator() is called first, "
                         "as a training program would; it affects every impl alike)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_allocator else tune_allocator()
    T, B, H, I = args.seq, args.batch, args.hidden, args.input
    impls = args.impls.split(",")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, fp32, hidden={H} batch={B} seq={T} "
          f"input={I}; allocator tuned: {tuned}; load avg {os.getloadavg()[0]:.2f}")
    print(f"forward+backward of one layer incl. the input projection X @ W_xh; median (min) of {args.repeats}")
    print(f"{'cell':5} {'impl':8} {'ms/iter':>9} {'(min)':>8} {'chars/s':>9} {'t/t_scan':>9}")
    t_start = time.perf_counter()
    for cell in args.cells.split(","):
        steps = {impl: make_step(cell, impl, T, B, I, H) for impl in impls}
        times = time_round_robin(steps, args.warmup, args.repeats)
        for impl in impls:
            t, tmin = times[impl]
            ratio = f"{t / times['scan'][0]:.2f}" if "scan" in times else ""
            print(f"{cell:5} {impl:8} {t * 1e3:9.1f} {tmin * 1e3:8.1f} {B * T / t:9.0f} {ratio:>9}", flush=True)
    print(f"total {time.perf_counter() - t_start:.1f} s; load avg {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
