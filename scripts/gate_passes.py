"""Why a scan's elementwise gate passes cost more than the same operations alone: the
step's recurrent product streams W_hh through the core's cache and pushes the step's
(B, H) operands out of it. Times three gate-like operations on (B, H) blocks alone and
right after a (B, H) @ (H, G) product, for W_hh of 1 to 8 MB (docs/performance.md).

    python scripts/gate_passes.py                # batch 64, hidden 512, 1 and 2 threads
    python scripts/gate_passes.py --batch 32 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=400, help="timed steps per row (after 50 untimed)")
    args = parser.parse_args()
    if min(args.batch, args.hidden, args.steps, *args.threads) < 1:
        parser.error("--batch, --hidden, --steps and --threads take positive integers")
    B, H = args.batch, args.hidden
    print(f"batch {B}, hidden {H}; µs per step, medians of 3 runs of {args.steps} steps\n")
    print("| threads | W_hh (H x G) | W_hh MB | the 3 operations alone | after the product | the product |")
    print("|---:|---|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for gates in (1, 2, 4, 8):
            alone = median([timed(B, H, gates * H, False, args.steps)[1] for _ in range(3)])
            runs = [timed(B, H, gates * H, True, args.steps) for _ in range(3)]
            product, after = median([r[0] for r in runs]), median([r[1] for r in runs])
            print(f"| {threads} | {H} x {gates * H} | {H * gates * H * 4 / 2**20:.0f} | {alone:.0f} | {after:.0f} "
                  f"| {product:.0f} |")


def timed(B: int, H: int, G: int, with_product: bool, steps: int) -> tuple[float, float]:
    """µs per step in the product and in three operations on (B, H) blocks, as a cell's
    step applies them (an addcmul, a mul, an addcmul), over `steps` steps."""
    x, y, z, o = (torch.rand(B, H) for _ in range(4))
    W, h, a = torch.randn(H, G) * 0.01, torch.rand(B, H), torch.empty(B, G)
    in_product = in_ops = 0.0
    for i in range(steps + 50):
        t0 = time.perf_counter()
        if with_product:
            torch.mm(h, W, out=a)
        t1 = time.perf_counter()
        torch.addcmul(x, y, z, out=o)
        torch.mul(o, x, out=y)
        torch.addcmul(z, o, y, out=x)
        t2 = time.perf_counter()
        if i >= 50:
            in_product, in_ops = in_product + t1 - t0, in_ops + t2 - t1
    return in_product / steps * 1e6, in_ops / steps * 1e6


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


if __name__ == "__main__":
    main()
