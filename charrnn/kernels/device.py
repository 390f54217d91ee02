"""Where a command computes: --device auto, cpu or cuda, and --threads."""

from __future__ import annotations

import torch

from charrnn.config import DEVICES
from charrnn.errors import CharrnnError


def pick_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise CharrnnError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharrnnError("--device cuda was asked for, but CUDA is not available here (try --device cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def set_threads(threads: int) -> None:
    """torch's CPU threads (--threads of every command that computes): `threads` of them,
    or with 0, as many as torch chose (one per core)."""
    if threads < 0:
        raise CharrnnError(f"--threads must not be negative, got {threads}")
    if threads:
        torch.set_num_threads(threads)
