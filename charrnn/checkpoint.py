"""The one checkpoint format.

A checkpoint is a single `torch.save` file holding only tensors and plain Python values
(dict, list, str, int, float, bool, None), so it loads with `weights_only=True`: loading
a hostile file cannot run code from it. Keys:

    format        "charrnn-checkpoint"
    version       FORMAT_VERSION
    model_config  ModelConfig as a dict (cell, hidden, layers, dropout, vocab_size, ...)
    vocab         Vocab.to_dict()
    model         the model's state_dict
    optimizer     the optimizer's state_dict
    config        the TrainConfig the run was started with, as a dict
    progress      step, epoch, index (position in the data), chars_seen, elapsed,
                  best_val_loss, last_val_loss, evals_since_best and lr_scale (patience
                  and the plateau schedule)
    corpus        where the text came from: kind, path or name, sha256, split
    rng           torch CPU (and CUDA) generator states, for exact resume
    state         the hidden state carried into the next batch (list per layer)

Writes are atomic: a temporary file in the same directory, flushed and fsynced, then
renamed over the target, so a crash never leaves a half-written checkpoint in its place.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from charrnn.errors import CharrnnError

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("model_config", "vocab", "model")


def save_checkpoint(payload: dict, path: str | Path) -> None:
    path = Path(path)
    payload = {"format": FORMAT, "version": FORMAT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded safely; one-line CharrnnError for anything that is
    not a readable charrnn checkpoint of a format this version understands."""
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    if not path.is_file():
        raise CharrnnError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        with open(path, "rb") as f:
            starts_like_zip = f.read(4) == b"PK\x03\x04"
        if starts_like_zip:
            raise CharrnnError(f"{path} is not a readable checkpoint (truncated or corrupt?)")
        raise CharrnnError(f"{path} is not a charrnn checkpoint (not a PyTorch zip archive)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CharrnnError(
            f"refusing to load {path}: it is not a plain charrnn checkpoint (it holds Python "
            "objects that could run code)"
        ) from None
    except Exception as e:  # a damaged archive can fail in many ways; none may escape as a traceback
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CharrnnError(f"{path} is not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharrnnError(f"{path} is not a charrnn checkpoint")
    version = payload.get("version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CharrnnError(
            f"{path} has checkpoint format {version}; this charrnn reads format {FORMAT_VERSION}"
            + (" (upgrade charrnn)" if newer else "")
        )
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CharrnnError(f"{path} is an incomplete checkpoint: missing {', '.join(missing)}")
    return payload


def resolve_checkpoint(where: str | Path | None, runs_dir: str | Path = "runs") -> Path:
    """A checkpoint file from a file, a run directory (its best.pt, else last.pt), or
    nothing (the best checkpoint of runs/latest)."""
    if where is None:
        where = Path(runs_dir) / "latest"
        if not where.exists():
            raise CharrnnError(f"no checkpoint given and no {where} (train a model first, or pass --checkpoint)")
    where = Path(where)
    if where.is_dir():
        for name in ("best.pt", "last.pt"):
            if (where / name).is_file():
                return where / name
        raise CharrnnError(f"no checkpoint (best.pt or last.pt) in {where}")
    return where
