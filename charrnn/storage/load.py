"""A checkpoint or exported folder made the model that generate, eval, neurons, serve and
export use: load_model, resolved once, checked against what the file claims."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from charrnn.config import ModelConfig
from charrnn.corpus.vocab import Vocab
from charrnn.errors import CharrnnError
from charrnn.kernels.device import pick_device
from charrnn.model import build_model
from charrnn.storage.checkpoint import load_checkpoint, resolve_checkpoint


@dataclass
class LoadedModel:
    """A checkpoint made a model, for generate, eval, neurons and serve: the model (in eval
    mode), its vocabulary and config, the checkpoint's contents and the file they came
    from, resolved once. Unpacks as (model, vocab, checkpoint)."""

    model: torch.nn.Module
    vocab: Vocab
    config: ModelConfig
    checkpoint: dict
    path: Path

    @property
    def run_dir(self) -> Path:
        """The folder the checkpoint is in (its run directory, with the corpus's cache)."""
        return self.path.parent

    def __iter__(self):
        return iter((self.model, self.vocab, self.checkpoint))


def load_model(where, device_name: str = "auto") -> LoadedModel:
    """The model of a checkpoint file or run directory (None: runs/latest), in eval mode
    on the device named (auto, cpu or cuda)."""
    device = pick_device(device_name)
    path = resolve_checkpoint(where)
    ckpt = load_checkpoint(path, map_location=device)
    try:
        vocab = Vocab.from_dict(ckpt["vocab"])
        config = ModelConfig(**ckpt["model_config"])
        if not (isinstance(config.layers, int) and 0 < config.layers <= len(ckpt["model"])):
            raise ValueError(f"{config.layers!r} layers")
        # Built on the meta device: no memory is set aside for whatever sizes a damaged or
        # hostile file claims; the weights are the file's own tensors.
        with torch.device("meta"):
            model = build_model(config)
        model.load_state_dict(ckpt["model"], assign=True)
    except (TypeError, KeyError, RuntimeError, ValueError, AttributeError) as e:
        raise CharrnnError(f"the checkpoint's model does not fit its config: {str(e).splitlines()[0]}") from None
    if len(vocab) != config.vocab_size:
        raise CharrnnError(f"the checkpoint's vocabulary has {len(vocab)} characters but its model {config.vocab_size}")
    if not all(p.device.type != "meta" and p.is_floating_point() and bool(torch.isfinite(p).all())
               for p in model.parameters()):
        raise CharrnnError("the checkpoint's weights are not all finite floating-point numbers")
    return LoadedModel(model.to(device).eval(), vocab, config, ckpt, path)
