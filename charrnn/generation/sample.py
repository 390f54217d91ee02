"""Generation: warm the state up on a prefix, then emit one character at a time, each fed
back as the next input."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from charrnn.kernels import cuda_graphs
from charrnn.config import SAMPLING as S
from charrnn.corpus.vocab import Vocab
from charrnn.errors import CharrnnError
from charrnn.scoring.evaluation import eval_mode
from charrnn.model import RNNLMScratch, copy_state, map_state


@torch.inference_mode()
def warm_up(model: RNNLMScratch, prefix_ids: torch.Tensor, batch_size: int = 1, state=None):
    """Run the prefix through the model from `state` (None: zeros; outputs unused but the
    last) and return the state and the logits for the character after it. An empty prefix
    leaves the state as it is, with no new prediction (None). Runs in eval mode (no
    dropout) and leaves the model in the mode it found it in."""
    if len(prefix_ids) == 0:
        return (model.zero_state(batch_size) if state is None else state), None
    X = prefix_ids.to(model.W_hq.device).long().expand(batch_size, -1)
    with eval_mode(model):
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
    """-log(-log(U)) with U ~ Uniform(0, 1): Gumbel(0, 1) noise for `steps` draws at once.
    (Uniform draws and two logs: faster on a CPU than exponential_, see docs/performance.md;
    U = 0, which torch.rand can return, is taken as the smallest positive float.)"""
    u = torch.rand(steps, batch, vocab, generator=generator, device=device)
    return u.clamp_(min=torch.finfo(u.dtype).tiny).log_().neg_().log_().neg_()


class Sampler:
    """One step of generation: the model's own step (RNNLMScratch.stepper, its fast
    inference path), and on CUDA, where each of a step's ~5-10 small kernels costs a launch,
    that step captured as a CUDA graph after one eager step and replayed for ids given as a
    tensor: the ids and the state are copied into the graph's tensors, and the logits and new
    state come back in its tensors, valid until the next step. If the capture fails the
    steps stay eager."""

    GRAPH_DEVICES = ("cuda",)

    def __init__(self, model: RNNLMScratch):
        self.stepper = model.stepper()
        self.graphs = model.W_hq.device.type in self.GRAPH_DEVICES
        self._graph, self._eager_rows = None, None

    def step(self, ids, state: list):
        """ids (batch,): a tensor or a list of ints -> logits (batch, vocab) for the next
        character, and the new state (the old state is not modified)."""
        if self.graphs and isinstance(ids, torch.Tensor):
            return self._replay(ids, state)
        return self._eager_step(ids, state)

    def _replay(self, ids: torch.Tensor, state: list):
        rows = ids.shape[0]
        if self._graph is None or self._graph[0] != rows:
            if self._eager_rows != rows:  # one eager step first: it sets up what the capture uses
                self._eager_rows = rows
                return self._eager_step(ids, state)
            try:
                static_ids, static_state = ids.clone(), map_state(torch.clone, list(state))
                graph, (logits, new_state) = self._capture_graph(lambda: self._eager_step(static_ids, list(static_state)))
            except Exception:  # noqa: BLE001 - an op that cannot be captured: stay eager
                self.graphs = False
                torch.cuda.synchronize()
                return self._eager_step(ids, state)
            self._graph = rows, graph, static_ids, static_state, logits, new_state
        _, graph, static_ids, static_state, logits, new_state = self._graph
        static_ids.copy_(ids)
        copy_state(static_state, state)
        graph.replay()
        return logits, list(new_state)

    _capture_graph = staticmethod(cuda_graphs.capture)  # (a hook the tests replace)

    def _eager_step(self, ids, state: list):
        return self.stepper.step(ids, state)


NOISE_CHUNK = 256  # steps of Gumbel noise drawn at once


class GenerationStream:
    """`samples` continuations whose state carries over between calls: `feed` text (a
    prefix, or a line typed at the interactive prompt), then `sample` characters that
    follow everything fed and sampled so far. `generate` is one feed and one sample.
    Settings are checked here, before anything is generated."""

    def __init__(self, model: RNNLMScratch, vocab: Vocab, *, temperature: float = S.temperature,
                 top_k: int = S.top_k, top_p: float = S.top_p, greedy: bool = S.greedy, samples: int = S.samples,
                 seed: int | None = S.seed):
        if not 0 <= temperature < float("inf"):  # also NaN; infinity would sample uniform noise
            raise CharrnnError(f"--temperature must be a finite number >= 0, got {temperature}")
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

    def continue_from(self, state, logits: torch.Tensor) -> None:
        """Go on from one stream's `state` and its `logits` (1, vocab) for the next character,
        in every one of the samples, as if that stream had been fed."""
        rows = self.samples
        self.state = [map_state(lambda t: t.expand(rows, -1).contiguous(), layer) for layer in state]
        self.logits = logits.expand(rows, -1).contiguous()

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

    def _emit(self, length: int):
        # inference mode around each step's work, not around the generator: torch's
        # decorator would re-enter it (a copy of the context manager) at every yield, a
        # noticeable share of a character's time, and a `with` across a yield would leak
        # into the caller
        no_autograd = torch.inference_mode()
        with no_autograd:
            model = self.model
            model.eval()
            if self.state is None:
                self.state = model.zero_state(self.samples)
            self.state = list(self.state)
            if self.logits is None:  # nothing fed yet: the first character comes from the zero state's output
                self.logits = model.output_layer(model.state_output(self.state).unsqueeze(0))[:, -1]
            sampler = Sampler(model)
        tokens, device = self.vocab.idx_to_token, model.W_hq.device
        s = self.settings
        temperature = s["temperature"]
        # plain sampling (no top-k or top-p): argmax(logits / T + noise) = argmax(logits + T noise),
        # one operation fewer per step with the noise scaled once per chunk
        plain = not (s["greedy"] or temperature == 0 or 0 < s["top_k"] < len(self.vocab) or s["top_p"] < 1)
        for t in range(length):
            with no_autograd:
                if t % NOISE_CHUNK == 0:
                    noise = gumbel_noise(min(NOISE_CHUNK, length - t), self.samples, len(self.vocab),
                                         self.generator, device)
                    if plain and temperature != 1:
                        noise.mul_(temperature)
                    noise_steps = noise.unbind(0)
                if plain:  # (in place: these logits are replaced by the step below)
                    ids = self.logits.add_(noise_steps[t % NOISE_CHUNK]).argmax(-1)
                else:
                    ids = choose(self.logits, noise=noise_steps[t % NOISE_CHUNK], **s)
                id_list = ids.tolist()
                # step before yielding: a caller that stops early still leaves a state that has
                # seen every character it was given
                self.logits, self.state = sampler.step(ids if sampler.graphs or len(id_list) > 1 else id_list,
                                                       self.state)
            yield [tokens[i] for i in id_list]


def generate(model: RNNLMScratch, vocab: Vocab, prefix: str = "", length: int = S.length, *,
             temperature: float = S.temperature, top_k: int = S.top_k, top_p: float = S.top_p,
             greedy: bool = S.greedy, samples: int = S.samples, seed: int | None = S.seed) -> Iterator[list[str]]:
    """An iterator that yields, for each of `length` steps, the next character of every one
    of `samples` continuations of `prefix` (the prefix itself is not yielded). Settings and
    the prefix are checked here, before anything is generated."""
    if length < 0:
        raise CharrnnError(f"--length must not be negative, got {length}")
    stream = GenerationStream(model, vocab, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                              samples=samples, seed=seed)
    stream.feed(prefix)
    return stream.sample(length)
