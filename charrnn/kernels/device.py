"""The device a command runs on: --device auto, cpu or cuda."""

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
