"""Generation: warm the state up on a prefix, then emit one character at a time, each fed
back as the next input."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from charrnn.data import Vocab
from charrnn.errors import CharrnnError
from charrnn.model import RNNLMScratch


@torch.inference_mode()
def warm_up(model: RNNLMScratch, prefix_ids: torch.Tensor, batch_size: int = 1, state=None):
    """Run the prefix through the model from `state` (None: zeros; outputs unused but the
    last) and return the state and the logits for the character after it. An empty prefix
    leaves the state as it is, with no new prediction (None)."""
    if len(prefix_ids) == 0:
        return (model.zero_state(batch_size) if state is None else state), None
    X = prefix_ids.to(model.W_hq.device).long().expand(batch_size, -1)
    rnn_outputs, state = model.rnn.forward_tokens(X.T, state)
    return state, model.output_layer(rnn_outputs[-1:])[:, -1]


def choose(logits: torch.Tensor, temperature: float, top_k: int, greedy: bool,
           noise: torch.Tensor | None, top_p: float = 1.0) -> torch.Tensor:
    """Next ids (batch,) from logits (batch, vocab): the argmax (the book's predict), or a
    sample from softmax(logits / temperature), optionally restricted to the top_k most
    likely and then to the nucleus: the fewest most likely characters whose probabilities
    add up to top_p. Sampling adds Gumbel noise and takes the argmax (the Gumbel-max trick:
    an exact sample, in three cheap operations instead of a softmax and a multinomial draw)."""
    if greedy or temperature == 0:
        return logits.argmax(-1)
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_probs, order = torch.softmax(logits / temperature, dim=-1).sort(dim=-1, descending=True)
        # a character is outside when those more likely than it already add up to top_p,
        # so the most likely is always kept
        outside_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        outside = torch.empty_like(outside_sorted).scatter_(-1, order, outside_sorted)
        logits = logits.masked_fill(outside, float("-inf"))
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


class GenerationStream:
    """`samples` continuations whose state carries over between calls: `feed` text (a
    prefix, or a line typed at the interactive prompt), then `sample` characters that
    follow everything fed and sampled so far. `generate` is one feed and one sample.
    Settings are checked here, before anything is generated."""

    def __init__(self, model: RNNLMScratch, vocab: Vocab, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, samples: int = 1, seed: int | None = None):
        if not temperature >= 0:  # also NaN
            raise CharrnnError(f"--temperature must be a number >= 0, got {temperature}")
        if top_k < 0:
            raise CharrnnError(f"--top-k must not be negative, got {top_k}")
        if not 0 < top_p <= 1:
            raise CharrnnError(f"--top-p must be in (0, 1], got {top_p}")
        if samples < 1:
            raise CharrnnError(f"--samples must be at least 1, got {samples}")
        self.model, self.vocab, self.samples = model, vocab, samples
        self.settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": greedy}
        self.generator = torch.Generator(device=model.W_hq.device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.state, self.logits = None, None

    def feed(self, text: str, what: str = "the prefix") -> None:
        """Run text through the model; a character outside the vocabulary raises CharrnnError
        (naming the text as `what`) before anything changes."""
        ids = self.vocab.encode(text, what)
        self.model.eval()
        self.state, logits = warm_up(self.model, ids, self.samples, self.state)
        if logits is not None:
            self.logits = logits

    def sample(self, length: int) -> Iterator[list[str]]:
        """An iterator that yields, for each of `length` steps, the next character of every
        continuation."""
        if length < 0:
            raise CharrnnError(f"--length must not be negative, got {length}")
        return self._emit(length)

    @torch.inference_mode()
    def _emit(self, length: int):
        model = self.model
        model.eval()
        if self.state is None:
            self.state = model.zero_state(self.samples)
        self.state = list(self.state)
        if self.logits is None:  # nothing fed yet: the first character comes from the zero state's output
            self.logits = model.output_layer(state_output(self.state).unsqueeze(0))[:, -1]
        sampler = Sampler(model)
        tokens, device = self.vocab.idx_to_token, model.W_hq.device
        for t in range(length):
            if t % NOISE_CHUNK == 0:
                noise = gumbel_noise(min(NOISE_CHUNK, length - t), self.samples, len(self.vocab), self.generator,
                                     device)
            ids = choose(self.logits, noise=noise[t % NOISE_CHUNK], **self.settings)
            # step before yielding: a caller that stops early still leaves a state that has
            # seen every character it was given
            self.logits, self.state = sampler.step(ids, self.state)
            yield [tokens[i] for i in ids.tolist()]


def generate(model: RNNLMScratch, vocab: Vocab, prefix: str = "", length: int = 200, *,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             samples: int = 1, seed: int | None = None) -> Iterator[list[str]]:
    """An iterator that yields, for each of `length` steps, the next character of every one
    of `samples` continuations of `prefix` (the prefix itself is not yielded). Settings and
    the prefix are checked here, before anything is generated."""
    if length < 0:
        raise CharrnnError(f"--length must not be negative, got {length}")
    stream = GenerationStream(model, vocab, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              samples=samples, seed=seed)
    stream.feed(prefix)
    return stream.sample(length)


def state_output(state) -> torch.Tensor:
    """The last layer's H from a stacked state."""
    last = state[-1]
    return last[0] if isinstance(last, tuple) else last
