"""Beam search over characters: the most likely continuations of a prefix that a beam of
`width` finds, each with its log-probability under the model.

Users of char-rnn and torch-rnn who asked for it (char-rnn #138, torch-rnn #113) found
beams conservative, like a low temperature: the likeliest text is often repetitive.
"""

from __future__ import annotations

import torch

from charrnn.errors import CharrnnError
from charrnn.model import RNNLMScratch, map_state
from charrnn.generation.sample import Sampler, warm_up


@torch.inference_mode()
def beam_search(model: RNNLMScratch, prefix_ids: torch.Tensor, width: int,
                length: int) -> list[tuple[list[int], float]]:
    """The `width` best continuations of exactly `length` characters (fewer when the
    vocabulary allows fewer), most likely first: (ids, natural-log probability given the
    prefix). Each step keeps the `width` best one-character extensions of the beams."""
    if width < 1:
        raise CharrnnError(f"--beam must be at least 1, got {width}")
    if length < 0:
        raise CharrnnError(f"--length must not be negative, got {length}")
    model.eval()
    state, logits = warm_up(model, prefix_ids, 1)
    state = list(state)
    if logits is None:  # no prefix: the first character comes from the zero state's output
        logits = model.output_layer(model.state_output(state).unsqueeze(0))[:, -1]
    device = model.W_hq.device
    scores = torch.zeros(1, dtype=torch.float64, device=device)  # float64: sums of many small terms
    history = torch.empty(1, 0, dtype=torch.long, device=device)
    sampler = Sampler(model)
    for step in range(length):
        totals = scores[:, None] + torch.log_softmax(logits.double(), dim=-1)
        best = totals.flatten().topk(min(width, totals.numel()))
        parents, ids = best.indices.div(totals.shape[1], rounding_mode="floor"), best.indices % totals.shape[1]
        scores, history = best.values, torch.cat([history[parents], ids[:, None]], dim=1)
        if step < length - 1:
            state = map_state(lambda s: s.index_select(0, parents), state)
            logits, state = sampler.step(ids, state)
    return list(zip(history.tolist(), scores.tolist()))
