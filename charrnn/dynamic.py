"""Dynamic evaluation (Krause, Kahembwe, Murray and Renals, "Dynamic Evaluation of Neural
Sequence Models", ICML 2018): the model reads a text as one stream, in segments; each
segment is scored first, then the weights take one gradient step on it, so the model
adapts to what it reads (names, spellings, style) while every character is still scored
before any update that saw it.

The step is the paper's "RMS with decay" rule, for each parameter θ with trained value θ₀:

    θ ← θ − lr · g / (rms + ε)  +  λ · (rms / mean(rms)) · (θ₀ − θ)

where g is the gradient of the segment's mean loss, rms the root mean square of such
gradients over the training text (measured once, before reading), and the decay λ pulls
the weights back towards the trained ones (its per-parameter rate clipped at 1, as the
paper does). Each segment is one forward and one backward through the model's own fast
recurrences (the cells' scans, charrnn/cells/), the state carried
from segment to segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charrnn.errors import CharrnnError
from charrnn.evaluation import eval_mode, evaluate
from charrnn.model import detach_state

# The gradient statistics: segments of this many parallel streams from the start of the
# training text, up to STATS_CHARS characters in all (a few seconds of training's work).
STATS_STREAMS = 32
STATS_CHARS = 65536


@dataclass
class DynamicSettings:
    """lr and decay: tuned on the tail of tinyshakespeare's training split with a model of
    the shakespeare preset's size (docs/dynamic-evaluation.md); seq_len is in the paper's
    range for characters."""

    seq_len: int = 50
    lr: float = 1e-4
    decay: float = 1e-3
    # ε as a fraction of the mean rms: a weight whose gradient the statistics never saw
    # moves at most ~10x as far as an average one, not without bound
    epsilon_fraction: float = 0.1

    def __post_init__(self):
        if self.seq_len < 1:
            raise CharrnnError(f"--dyn-seq-len must be positive, got {self.seq_len}")
        if not self.lr >= 0:
            raise CharrnnError(f"--dyn-lr must be a number >= 0, got {self.lr}")
        if not 0 <= self.decay <= 1:
            raise CharrnnError(f"--dyn-decay must be in [0, 1], got {self.decay}")


def gradient_rms(model, train_ids: torch.Tensor, seq_len: int, max_chars: int = STATS_CHARS) -> list[torch.Tensor]:
    """Per parameter, the root mean square of the gradient of a segment's mean loss, over
    segments of `seq_len` characters of the first `max_chars` of the training text
    (STATS_STREAMS streams read in order, state carried). In eval mode; the model's
    gradients are left as they were."""
    params = list(model.parameters())
    text = train_ids[: max_chars + 1]
    streams = max(1, min(STATS_STREAMS, (len(text) - 1) // seq_len))
    length = (len(text) - 1) // streams
    if length < 1:
        raise CharrnnError("the training text is too short for dynamic evaluation's gradient statistics")
    device = params[0].device
    inputs = text[: streams * length].view(streams, length).to(device).long()
    targets = text[1 : streams * length + 1].view(streams, length).to(device).long()
    squares, segments, state = [torch.zeros_like(p) for p in params], 0, None
    with eval_mode(model):
        for start in range(0, length, seq_len):
            logits, state = model(inputs[:, start : start + seq_len], state)
            loss = F.cross_entropy(logits.flatten(0, 1), targets[:, start : start + seq_len].flatten())
            grads = torch.autograd.grad(loss, params)
            torch._foreach_addcmul_(squares, grads, grads)
            state, segments = detach_state(state), segments + 1
    return [(s / segments).sqrt_() for s in squares]


class DynamicEvaluation:
    """Reads texts with dynamic evaluation, adapting `model`'s weights in place; `restore`
    puts the trained weights back."""

    def __init__(self, model, rms: list[torch.Tensor], settings: DynamicSettings):
        self.model, self.settings = model, settings
        self.params = list(model.parameters())
        self.trained = [p.detach().clone() for p in self.params]
        mean_rms = torch.cat([r.flatten() for r in rms]).mean()
        epsilon = settings.epsilon_fraction * mean_rms
        self.step_scale = [-settings.lr / (r + epsilon) for r in rms]
        self.decay_rate = [(settings.decay * r / mean_rms).clamp_(max=1.0) for r in rms]

    def read(self, ids: torch.Tensor, state=None):
        """Score `ids` as one stream from `state` (None: zeros), updating after each segment.
        Returns each character's loss (nats; len(ids) - 1 of them: the first character has
        no prediction), the final state, and the logits for the character after the text."""
        ids = ids.to(self.params[0].device).long()
        losses, logits, seq_len = [], None, self.settings.seq_len
        with eval_mode(self.model):
            for start in range(0, len(ids) - 1, seq_len):
                X = ids[start : min(start + seq_len, len(ids) - 1)]
                Y = ids[start + 1 : start + 1 + len(X)]
                with torch.set_grad_enabled(self.settings.lr > 0):
                    logits, state = self.model(X[None], state)
                    segment = F.cross_entropy(logits[0], Y, reduction="none")
                losses.append(segment.detach())
                if self.settings.lr > 0:
                    self._update(torch.autograd.grad(segment.mean(), self.params))
                state = detach_state(state)
        last = None if logits is None else logits[:, -1].detach()
        return torch.cat(losses) if losses else ids.new_zeros(0, dtype=torch.float), state, last

    @torch.no_grad()
    def _update(self, grads) -> None:
        for p, g, scale, rate, trained in zip(self.params, grads, self.step_scale, self.decay_rate, self.trained):
            pull = (trained - p).mul_(rate)
            p.addcmul_(g, scale).add_(pull)

    @torch.no_grad()
    def restore(self) -> None:
        for p, trained in zip(self.params, self.trained):
            p.copy_(trained)


def dynamic_evaluate(model, ids: torch.Tensor, rms: list[torch.Tensor], settings: DynamicSettings) -> tuple[float, int]:
    """Summed loss (nats) and characters scored by dynamic evaluation of `ids`; the
    model's weights are the trained ones again afterwards."""
    reader = DynamicEvaluation(model, rms, settings)
    try:
        losses, _, _ = reader.read(ids)
    finally:
        reader.restore()
    return losses.double().sum().item(), len(losses)


def compare(model, ids: torch.Tensor, train_ids: torch.Tensor, settings: DynamicSettings) -> dict:
    """Static and dynamic evaluation of `ids` read the same way (one stream, in segments of
    settings.seq_len, from a zero state), so that the gain is the adaptation's alone:
    {"static": (loss sum, count), "dynamic": (loss sum, count)}. The model's weights are
    the trained ones again afterwards."""
    static = evaluate(model, ids, batch_size=1, seq_len=settings.seq_len)
    rms = gradient_rms(model, train_ids, settings.seq_len)
    return {"static": static, "dynamic": dynamic_evaluate(model, ids, rms, settings)}


def adapt_stream(stream, ids: torch.Tensor, train_ids: torch.Tensor, settings: DynamicSettings) -> None:
    """Adapt a GenerationStream's model to `ids` by dynamic evaluation (its weights stay
    adapted) and leave the stream where the text ends, for every one of its samples."""
    reader = DynamicEvaluation(stream.model, gradient_rms(stream.model, train_ids, settings.seq_len), settings)
    _, state, logits = reader.read(ids)
    stream.continue_from(state, logits)
