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
           generator: torch.Generator | None, top_p: float = 1.0) -> torch.Tensor:
    """Next ids (batch,) from logits (batch, vocab): argmax (the book), or a sample from
    softmax(logits / temperature), optionally restricted to the top_k most likely and then
    to the nucleus: the fewest most likely characters whose probabilities sum to top_p."""
    if greedy or temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # a character is kept when the ones more likely than it sum to less than top_p,
        # so the most likely is always kept
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_settings(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise CharrnnError(f"--temperature must not be negative, got {temperature}")
    if top_k < 0:
        raise CharrnnError(f"--top-k must not be negative, got {top_k}")
    if not 0 < top_p <= 1:
        raise CharrnnError(f"--top-p must be in (0, 1], got {top_p}")


class Sampler:
    """A model sampling `samples` continuations whose state carries over between calls:
    `feed` text (a prefix, or more text typed later), then `sample` characters that follow
    everything fed and sampled so far. `generate` is one feed and one sample."""

    def __init__(self, model: RNNLMScratch, vocab: Vocab, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False, samples: int = 1, seed: int | None = None):
        check_settings(temperature, top_k, top_p)
        model.eval()
        self.model, self.vocab, self.samples = model, vocab, samples
        self.settings = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "greedy": greedy}
        device = model.W_hq.device
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.state, self.logits = None, None

    @torch.inference_mode()
    def feed(self, text: str, what: str = "the prefix") -> None:
        """Run text through the model; a character outside the vocabulary raises CharrnnError
        (naming the text as `what`) before anything changes."""
        ids = self.vocab.encode(text, what)
        self.state, logits = warm_up(self.model, ids, self.samples, self.state)
        if logits is not None:
            self.logits = logits

    def sample(self, length: int) -> Iterator[list[str]]:
        """Yield, for each of `length` steps, the next character of every continuation."""
        if length < 0:
            raise CharrnnError(f"--length must not be negative, got {length}")
        return self._sample(length)

    @torch.inference_mode()
    def _sample(self, length: int) -> Iterator[list[str]]:
        model = self.model
        if self.state is None:
            self.feed("")
        if self.logits is None:  # nothing fed yet: the first character comes from the zero state's output
            self.logits = model.output_layer(state_output(self.state).unsqueeze(0))[:, -1]
        for _ in range(length):
            ids = choose(self.logits, generator=self.generator, **self.settings)
            # step before yielding: a caller that stops early still leaves a state that has
            # seen every character it was given
            out, self.state = model.rnn.step_tokens(ids, self.state)
            self.logits = model.output_layer(out.unsqueeze(0))[:, 0]
            yield [self.vocab.idx_to_token[i] for i in ids.tolist()]


def generate(model: RNNLMScratch, vocab: Vocab, prefix: str = "", length: int = 200, *,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             samples: int = 1, seed: int | None = None) -> Iterator[list[str]]:
    """Yield, for each of `length` steps, the next character of every one of `samples`
    continuations of `prefix` (the prefix itself is not yielded)."""
    sampler = Sampler(model, vocab, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                      samples=samples, seed=seed)
    sampler.feed(prefix)
    return sampler.sample(length)


def state_output(state) -> torch.Tensor:
    """The last layer's H from a stacked state."""
    last = state[-1]
    return last[0] if isinstance(last, tuple) else last
