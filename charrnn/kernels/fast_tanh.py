"""tanh through sigmoid for CPU float32: the scans' and the sampler's tanh.

torch.tanh's CPU kernel is several times slower than torch.sigmoid's (docs/performance.md),
and tanh(x) = 2 sigmoid(2x) - 1 in four cheap operations is within 2e-7 of it (absolute;
float32 rounds tanh to ~6e-8). So CPU float32 blocks of FAST_TANH_MIN elements or more take
the identity; smaller blocks, CUDA and float64 take torch.tanh.
"""

from __future__ import annotations

import torch

__all__ = ["FAST_TANH_MIN", "applies", "tanh_into", "tanh"]

FAST_TANH_MIN = 2048  # elements; below this torch.tanh's one call is the cheaper


def applies(x: torch.Tensor) -> bool:
    """Whether tanh on x goes through 2 sigmoid(2x) - 1."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() >= FAST_TANH_MIN


def tanh_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """tanh(x) into out (which may be x). Not differentiable (it writes through out=)."""
    if applies(x):
        torch.add(x, x, out=out).sigmoid_()  # (x + x, not 2 * x: a scalar operand costs two tensor copies)
        return out.add_(out).sub_(1)
    return torch.tanh(x, out=out)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) as a new tensor, as tanh_into computes it (for inference: not differentiable
    where the identity applies)."""
    return tanh_into(x, torch.empty_like(x)) if applies(x) else torch.tanh(x)
