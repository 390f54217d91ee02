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
           noise: torch.Tensor | None) -> torch.Tensor:
    """Next ids (batch,) from logits (batch, vocab): the argmax (the book's predict), or a
    sample from softmax(logits / temperature), optionally restricted to the top_k most
    likely. Sampling adds Gumbel noise and takes the argmax (the Gumbel-max trick: an exact
    sample, in three cheap operations instead of a softmax and a multinomial draw)."""
    if greedy or temperature == 0:
        return logits.argmax(-1)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return (logits / temperature + noise).argmax(-1)


def gumbel_noise(steps: int, batch: int, vocab: int, generator, device) -> torch.Tensor:
    """-log(E) with E ~ Exp(1): Gumbel(0, 1) noise for `steps` draws at once."""
    return torch.empty(steps, batch, vocab, device=device).exponential_(generator=generator).log_().neg_()


class Sampler:
    """One step of generation with as little per-step work as the model allows: the first
    layer's input side for every character (`one_hot(id) @ W_xh + b`) is read from a table
    made once, and the output layer is a single addmm."""

    def __init__(self, model: RNNLMScratch):
        self.cells = model.rnn.cells
        first = self.cells[0]
        self.table = first.W_xh + first.input_bias()
        self.W_hq, self.b_q = model.W_hq, model.b_q

    def step(self, ids: torch.Tensor, state: list):
        """ids (batch,) -> logits (batch, vocab) for the next character, and the new state."""
        x = self.table.index_select(0, ids)
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                x = cell.project(x)
            x, state[layer] = cell.step(x, state[layer])
        return torch.addmm(self.b_q, x, self.W_hq), state


NOISE_CHUNK = 256  # steps of Gumbel noise drawn at once


@torch.inference_mode()
def generate(model: RNNLMScratch, vocab: Vocab, prefix: str = "", length: int = 200, *,
             temperature: float = 1.0, top_k: int = 0, greedy: bool = False, samples: int = 1,
             seed: int | None = None) -> Iterator[list[str]]:
    """Yield, for each of `length` steps, the next character of every one of `samples`
    continuations of `prefix` (the prefix itself is not yielded)."""
    if length < 0:
        raise CharrnnError(f"--length must not be negative, got {length}")
    if not temperature >= 0:  # also NaN
        raise CharrnnError(f"--temperature must be a number >= 0, got {temperature}")
    if top_k < 0:
        raise CharrnnError(f"--top-k must not be negative, got {top_k}")
    model.eval()
    device = model.W_hq.device
    prefix_ids = vocab.encode(prefix, "the prefix")
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    state, logits = warm_up(model, prefix_ids, samples)
    state = list(state)
    if logits is None:  # no prefix: the first character comes from the zero state's output
        logits = model.output_layer(state_output(state).unsqueeze(0))[:, -1]
    sampler = Sampler(model)
    tokens = vocab.idx_to_token
    # One sequence at a time is a chain of tiny matrix-vector products: on a CPU a second
    # thread only adds synchronisation, so the loop runs on one.
    threads = torch.get_num_threads()
    if device.type == "cpu" and samples == 1:
        torch.set_num_threads(1)
    try:
        for t in range(length):
            if t % NOISE_CHUNK == 0:
                noise = gumbel_noise(min(NOISE_CHUNK, length - t), samples, len(vocab), generator, device)
            ids = choose(logits, temperature, top_k, greedy, noise[t % NOISE_CHUNK])
            yield [tokens[i] for i in ids.tolist()]
            logits, state = sampler.step(ids, state)
    finally:
        torch.set_num_threads(threads)
def state_output(state) -> torch.Tensor:
    """The last layer's H from a stacked state."""
    last = state[-1]
    return last[0] if isinstance(last, tuple) else last
