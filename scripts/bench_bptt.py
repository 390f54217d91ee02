"""Quick CPU benchmark of charrnn.bptt's scans: forward + backward of one recurrent layer.

For each cell (RNN, GRU, LSTM) it times, in the same process and taking turns,
  ref      - the plain autograd loop (unbind-based) over the recurrence,
  scan     - charrnn.bptt's scan with its hand-written backward (default matmul backend:
             oneDNN for CPU float32 when available),
  blas     - the same scan with its matmuls forced to torch.mm/addmm (MKL here),
  scan+lin - the scan, with the input projection also through bptt.linear (oneDNN),
  torch    - torch.nn.RNN / GRU / LSTM (one layer, seq-first),
all computing the same function: xp = X @ W_xh + b (torch.addmm except in scan+lin), then the
recurrence, with gradients flowing into the outputs and the final state(s), w.r.t. X, the
weights, biases and h0 (c0). Prints ms per iteration (median and min of --repeats after
--warmup), chars/s (= B*T / median time) and each time over the scan's (t/t_scan > 1: the
scan is faster). Calls bptt.tune_allocator() first unless --no-tune-allocator. Keep the
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

from charrnn import bptt  # noqa: E402

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def ref_scan(cell, xp, states, W_hh, b_hh):
    h = states[0]
    c = states[1] if cell == "lstm" else None
    outs = []
    for x in xp.unbind(0):
        if cell == "rnn":
            h = torch.tanh(x + h @ W_hh)
        elif cell == "gru":
            xr, xz, xn = x.chunk(3, dim=-1)
            hr, hz, hn = (h @ W_hh + b_hh).chunk(3, dim=-1)
            r = torch.sigmoid(xr + hr)
            z = torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
        else:
            i, f, g, o = (x + h @ W_hh).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return (torch.stack(outs), h) + ((c,) if cell == "lstm" else ())


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

    W_xh = (torch.randn(I, G, generator=g) / I**0.5).requires_grad_()
    W_hh = (torch.randn(H, G, generator=g) / H**0.5).requires_grad_()
    b = torch.zeros(G).requires_grad_()
    b_hh = torch.zeros(G).requires_grad_() if cell == "gru" else None
    fn = {"rnn": bptt.rnn_scan, "gru": bptt.gru_scan, "lstm": bptt.lstm_scan}[cell]

    def step():
        prev = bptt.set_gemm_backend("blas" if impl == "blas" else "auto")
        try:
            run()
        finally:
            bptt.set_gemm_backend(prev)

    def run():
        if impl == "scan+lin":
            xp = bptt.linear(X, W_xh, b)
        else:
            xp = torch.addmm(b, X.view(T * B, I), W_xh).view(T, B, G)
        if impl == "ref":
            res = ref_scan(cell, xp, states, W_hh, b_hh)
        elif cell == "gru":
            res = fn(xp, states[0], W_hh, b_hh)
        elif cell == "lstm":
            res = fn(xp, states[0], states[1], W_hh)
        else:
            res = fn(xp, states[0], W_hh)
        torch.autograd.backward(list(res), grads)

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
                    help="leave glibc malloc as it is (by default bptt.tune_allocator() is called first, "
                         "as a training program would; it affects every impl alike)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    tuned = False if args.no_tune_allocator else bptt.tune_allocator()
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
