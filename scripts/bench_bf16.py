"""What a bfloat16 training step spends besides its products' arithmetic, on this CPU:

  1. each per-step product of the scans: torch.mm on bfloat16 operands (oneDNN reorders
     the weight inside every call) against the weight packed once, as cpu_matmul.Matmul
     does;
  2. a dropout mask for one batch of outputs: F.dropout's Bernoulli sampling against
     charrnn.model.dropout's mask from torch.rand, forward and backward.

Best of --repeats rounds, the two sides taking turns. The products need a CPU whose oneDNN
has bfloat16 matmuls (AMX or AVX512-BF16: `grep -o 'amx_bf16\\|avx512_bf16' /proc/cpuinfo`);
elsewhere only the masks are timed.

    python scripts/bench_bf16.py [--hidden 768 --batch-size 32 --seq-len 128 --dropout 0.3 --repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from charrnn.model import dropout


def best_us(fn, calls: int, repeats: int) -> float:
    """The best of `repeats` rounds of `calls` calls, in microseconds a call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def products(hidden: int, batch: int, gates: int, repeats: int) -> None:
    linear = torch.ops.mkldnn._linear_pointwise
    print("per-step product (M x K x N)   torch.mm, us   packed once, us   ratio")
    for K, N in ((hidden, gates * hidden), (gates * hidden, hidden)):  # forward, then backward
        a, W = torch.randn(batch, K).bfloat16(), torch.randn(K, N).bfloat16()
        packed = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), batch)
        plain = best_us(lambda: torch.mm(a, W), 50, repeats)
        once = best_us(lambda: linear(a, packed, None, "none", [], ""), 50, repeats)
        print(f"{batch:>6} x {K:>5} x {N:>5}          {plain:>10,.0f}   {once:>15,.0f}   {plain / once:5.2f}x")


def masks(shape: tuple[int, ...], p: float, repeats: int) -> None:
    x = torch.randn(shape)

    def through(drop):
        y = x.detach().requires_grad_()
        drop(y).sum().backward()

    bernoulli = best_us(lambda: through(lambda y: F.dropout(y, p, training=True)), 5, repeats)
    uniform = best_us(lambda: through(lambda y: dropout(y, p)), 5, repeats)
    print(f"dropout {p} on {tuple(shape)}, forward and backward: F.dropout {bernoulli / 1e3:,.1f} ms, "
          f"model.dropout {uniform / 1e3:,.1f} ms ({bernoulli / uniform:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; LSTM gates (4 x hidden)")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        products(args.hidden, args.batch_size, 4, args.repeats)
    else:
        print("no bfloat16 matmul in this CPU's oneDNN: products skipped")
    masks((args.seq_len, args.batch_size, args.hidden), args.dropout, args.repeats)


if __name__ == "__main__":
    main()
