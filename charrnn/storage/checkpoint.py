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
    progress      charrnn.training.run.Progress: step, epoch, index (position in the data),
                  chars_seen, elapsed, best_val_loss, last_val_loss, evals_since_best and
                  lr_scale (patience and the plateau schedule), world_size (processes
                  that trained it), planned_steps, planned_for and speed (--max-time's
                  plan), totals and anchor (every change of the step total, the
                  cosine's place at the last), script (a replay's plan to follow)
    corpus        where the text came from: kind, path or name, sha256, split
    rng           processes: every process's generator states (cpu, and cuda when it
                  trained on a GPU), rank by rank, for exact resume (charrnn.training.streams)
    state         the hidden state carried into the next batch (list per layer)
    evaluation    the layout of the logged validation loss: batch_size, seq_len,
                  carry_state (charrnn.scoring.evaluation.recorded_layout; older files lack it)

Writes are atomic (charrnn.storage.atomic), so a crash never leaves a half-written checkpoint in
its place.
charrnn.storage.load makes a checkpoint the model that generate, eval, neurons and serve use.
An exported folder (charrnn.storage.export: model.safetensors, config.json, vocab.json) is read
wherever a checkpoint is, as a checkpoint of its model, vocabulary, progress and corpus.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch

from charrnn.errors import CharrnnError
from charrnn.storage.atomic import write_atomically
from charrnn.storage.exported import is_export, read_export

FORMAT = "charrnn-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("model_config", "vocab", "model")
SECTIONS = ("model_config", "vocab", "model", "optimizer", "config", "progress", "corpus", "rng", "evaluation")  # dicts


def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write a checkpoint atomically. A failed write (a full disk) is a one-line CharrnnError
    and leaves the previous checkpoint at `path` as it was."""
    path = Path(path)
    try:
        atomic_save({"format": FORMAT, "version": FORMAT_VERSION, **payload}, path)
    except OSError as e:
        kept = "the previous one is kept" if path.exists() else "nothing was written"
        raise CharrnnError(f"cannot save the checkpoint {path}: {e.strerror or e}; {kept}") from None


def atomic_save(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically (charrnn.storage.atomic): on any failure `path` is
    untouched and no temporary file is left; OSError (disk full, read-only) propagates."""
    write_atomically(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint's contents, loaded safely; one-line CharrnnError for anything that is
    not a readable charrnn checkpoint of a format this version understands."""
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    if path.is_dir():  # an exported folder
        return {"format": FORMAT, "version": FORMAT_VERSION, **read_export(path, map_location)}
    if not path.is_file():
        raise CharrnnError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        with open(path, "rb") as f:
            starts_like_zip = f.read(4) == b"PK\x03\x04"
        if starts_like_zip:
            raise CharrnnError(f"{path} is not a readable checkpoint (truncated or corrupt?)")
        raise CharrnnError(f"{path} is not a charrnn checkpoint (not a PyTorch zip archive)")
    try:
        with warnings.catch_warnings():  # torch's notes on odd files would break the one-line promise
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
        if not isinstance(version, int) or isinstance(version, bool):
            raise CharrnnError(f"{path} has no valid checkpoint format version (found {repr(version)[:40]})")
        advice = "upgrade charrnn" if version > FORMAT_VERSION else "it was written by an older charrnn: use that version"
        raise CharrnnError(
            f"{path} has checkpoint format {version}; this charrnn reads format {FORMAT_VERSION} ({advice})"
        )
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CharrnnError(f"{path} is an incomplete checkpoint: missing {', '.join(missing)}")
    damaged = [k for k in SECTIONS if k in payload and not isinstance(payload[k], dict)]
    if damaged:
        raise CharrnnError(f"{path} is a damaged checkpoint: {', '.join(damaged)} should be a table")
    return payload


# A run directory's checkpoint for generate and eval: the best; to resume: the newest.
# best.pt is written just before last.pt, so a run killed between the two has a best.pt
# and possibly no last.pt yet; resuming from last.pt redoes those steps exactly.
BEST_FIRST = ("best.pt", "last.pt")
LAST_FIRST = ("last.pt", "best.pt")


def resolve_checkpoint(where: str | Path | None, runs_dir: str | Path = "runs", order=BEST_FIRST) -> Path:
    """A checkpoint file from a file, a run directory (the first of `order` there), or
    nothing (runs/latest); an exported folder is its own checkpoint."""
    if where is None:
        where = Path(runs_dir) / "latest"
        if not where.exists():
            raise CharrnnError(f"no checkpoint given and no {where} (train a model first, or pass --checkpoint)")
    where = Path(where)
    if where.is_dir():
        for name in order:
            if (where / name).is_file():
                return where / name
        if is_export(where):
            return where
        raise CharrnnError(f"no checkpoint ({' or '.join(order)}) in {where}")
    return where
