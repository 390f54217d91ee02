"""Generation: warm the state up on a prefix, then emit one character at a time, each fed
back as the next input."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from charrnn.data import Vocab
from charrnn.errors import CharrnnError
from charrnn.model import RNNLMScratch


@torch.inference_mode()
def warm_up(model: RNNLMScratch, prefix_ids: torch.Tensor, batch_size: int = 1):
    """Run the prefix through the model (outputs unused but the last) and return the state
    and the logits for the character after it. An empty prefix starts from a zero state
    with no prediction yet (None)."""
    if len(prefix_ids) == 0:
        return model.zero_state(batch_size), None
    X = prefix_ids.to(model.W_hq.device).long().expand(batch_size, -1)
    rnn_outputs, state = model.rnn.forward_tokens(X.T)
    return state, model.output_layer(rnn_outputs[-1:])[:, -1]


def choose(logits: torch.Tensor, temperature: float, top_k: int, greedy: bool,
           generator: torch.Generator | None) -> torch.Tensor:
    """Next ids (batch,) from logits (batch, vocab): argmax (the book), or a sample from
    softmax(logits / temperature), optionally restricted to the top_k most likely."""
    if greedy or temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.inference_mode()
def generate(model: RNNLMScratch, vocab: Vocab, prefix: str = "", length: int = 200, *,
             temperature: float = 1.0, top_k: int = 0, greedy: bool = False, samples: int = 1,
             seed: int | None = None) -> Iterator[list[str]]:
    """Yield, for each of `length` steps, the next character of every one of `samples`
    continuations of `prefix` (the prefix itself is not yielded)."""
    if length < 0:
        raise CharrnnError(f"--length must not be negative, got {length}")
    if temperature < 0:
        raise CharrnnError(f"--temperature must not be negative, got {temperature}")
    if top_k < 0:
        raise CharrnnError(f"--top-k must not be negative, got {top_k}")
    model.eval()
    device = model.W_hq.device
    prefix_ids = vocab.encode(prefix, "the prefix")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    state, logits = warm_up(model, prefix_ids, samples)
    if logits is None:  # no prefix: the first character comes from the zero state's output
        logits = model.output_layer(state_output(state).unsqueeze(0))[:, -1]
    for _ in range(length):
        ids = choose(logits, temperature, top_k, greedy, generator)
        yield [vocab.idx_to_token[i] for i in ids.tolist()]
        out, state = model.rnn.step_tokens(ids, state)
        logits = model.output_layer(out.unsqueeze(0))[:, 0]


def state_output(state) -> torch.Tensor:
    """The last layer's H from a stacked state."""
    last = state[-1]
    return last[0] if isinstance(last, tuple) else last
