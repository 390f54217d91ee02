"""`train --init-from`: a new run whose weights start from a trained model's.

The run's vocabulary is the checkpoint's, grown by the new text's characters
(charrnn.corpus.data.grown_vocab). Its model is built fresh, as the checkpoint's model was
(same cell, sizes and init scheme), so a new character's rows of the input table and
the head start as that scheme starts them; then every weight of the checkpoint is
copied in, each old character's rows to that character's new id.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from charrnn.config import ModelConfig
from charrnn.errors import CharrnnError
from charrnn.model import build_model


def vocab_dims(config: ModelConfig) -> dict[str, int]:
    """{parameter name: the dimension that runs over the vocabulary}, found by building
    the model (shapes only) for one more character: the input table's rows (W_xh, or E
    with an embedding) and the head's columns and biases (W_hq, b_q), whatever the cell."""
    with torch.device("meta"):
        now = build_model(config).state_dict()
        grown = build_model(replace(config, vocab_size=config.vocab_size + 1)).state_dict()
    return {name: [a != b for a, b in zip(now[name].shape, grown[name].shape)].index(True)
            for name in now if now[name].shape != grown[name].shape}


def load_trained(where):
    """(model, vocab, its checkpoint file) of the model a run starts from."""
    from charrnn.storage.checkpoint import resolve_checkpoint
    from charrnn.storage.load import load_model

    trained, trained_vocab, _ = load_model(where, "cpu")
    return trained, trained_vocab, str(resolve_checkpoint(where))


@torch.no_grad()
def start_from(model, model_config: ModelConfig, vocab, trained, trained_vocab, where: str) -> dict:
    """Copy the weights of `trained` (over `trained_vocab`; from `where`) into `model`, a
    fresh one of the same shape over `vocab`, which holds the trained vocabulary; returns
    {"from": where, "added": the characters the trained vocabulary lacked}."""
    if trained_vocab.kind != vocab.kind:
        raise CharrnnError(f"{where} is a {trained_vocab.kind} model; this run's vocabulary is {vocab.kind}")
    if vocab.kind == "bytes":
        old_ids, added = list(range(len(vocab))), []
    else:
        missing = [t for t in trained_vocab.idx_to_token if t not in vocab.token_to_idx]
        if missing:
            raise CharrnnError(f"this run's vocabulary lacks {len(missing)} of the checkpoint's characters")
        old_ids = [vocab.token_to_idx[t] for t in trained_vocab.idx_to_token]  # each old id's new id
        added = sorted(set(vocab.idx_to_token) - set(trained_vocab.idx_to_token))
    dims, weights, new = vocab_dims(model_config), trained.state_dict(), model.state_dict()
    index = torch.tensor(old_ids, device=next(model.parameters()).device)
    for name, param in new.items():
        old = weights.get(name)
        expected = list(param.shape)
        if name in dims:
            expected[dims[name]] = len(old_ids)
        if old is None or list(old.shape) != expected:
            shape = "missing" if old is None else list(old.shape)
            raise CharrnnError(f"{where}'s model does not fit this run's: {name} is {shape}, not {expected}")
        old = old.to(param)
        if name in dims:
            param.index_copy_(dims[name], index, old)
        else:
            param.copy_(old)
    return {"from": where, "added": added}
