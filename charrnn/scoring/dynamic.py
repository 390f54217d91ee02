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

lr and decay suit one model and not another, so `tune` chooses them per model on a text
that is not the one scored (`training_tail`: the end of the training text), keeping the
static reading where no candidate beats it there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from charrnn.config import DYNAMIC_DECAYS, DYNAMIC_LRS, TUNE_CHARS, TUNE_SECONDS, DynamicSettings
from charrnn.errors import CharrnnError
from charrnn.scoring.evaluation import eval_mode, evaluate
from charrnn.model import detach_state

# The gradient statistics: segments of this many parallel streams from the start of the
# training text, up to STATS_CHARS characters in all (a few seconds of training's work).
STATS_STREAMS = 32
STATS_CHARS = 65536


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


@dataclass
class Tuning:
    """What tuning found on a text: its static loss (mean, nats/char), each candidate tried
    with its loss, how many the time bound left untried, and the winner (None: no candidate
    beat static)."""

    chars: int
    static: float
    tried: list[tuple[DynamicSettings, float]] = field(default_factory=list)
    skipped: int = 0
    chosen: DynamicSettings | None = None


def tune(model, ids: torch.Tensor, rms: list[torch.Tensor], seq_len: int, lrs=DYNAMIC_LRS, decays=DYNAMIC_DECAYS,
         seconds: float = TUNE_SECONDS, clock=time.monotonic, on_result=None) -> Tuning:
    """Choose lr and decay for dynamic evaluation on `ids` (one stream, segments of
    `seq_len`): each of `lrs` with decays[0], then the other decays with the best of them;
    the lowest mean loss wins if it is below the static one. No candidate starts once
    `seconds` have gone by `clock` (the first always runs). `on_result(settings, loss,
    static)` hears of each as it ends. The model's weights are the trained ones again afterwards."""
    static, count = evaluate(model, ids, batch_size=1, seq_len=seq_len)
    tuning, started = Tuning(count, static / count), clock()

    def attempt(lr: float, decay: float) -> None:
        if tuning.tried and clock() - started >= seconds:
            tuning.skipped += 1
            return
        settings = DynamicSettings(seq_len=seq_len, lr=lr, decay=decay)
        total, n = dynamic_evaluate(model, ids, rms, settings)
        tuning.tried.append((settings, total / n))
        if on_result:
            on_result(settings, total / n, tuning.static)

    for lr in lrs:
        attempt(lr, decays[0])
    best_lr = min(tuning.tried, key=lambda tried: tried[1])[0].lr
    for decay in decays[1:]:
        attempt(best_lr, decay)
    best, loss = min(tuning.tried, key=lambda tried: tried[1])
    tuning.chosen = best if loss < tuning.static else None
    return tuning


def training_tail(train_ids: torch.Tensor, source: dict, chars: int = TUNE_CHARS) -> torch.Tensor:
    """The last `chars` characters of the training text that come before the validation
    text: for the d2l windows split, whose last training window reaches seq_len characters
    into the validation text, the training ids before the first validation window."""
    windows = source.get("windows")
    before = train_ids[: windows[0]] if windows else train_ids
    return before[-(chars + 1) :]


def compare(model, ids: torch.Tensor, train_ids: torch.Tensor, settings: DynamicSettings, tail=None,
            on_result=None) -> dict:
    """Static and dynamic evaluation of `ids` read the same way (one stream, in segments of
    settings.seq_len, from a zero state), so that the gain is the adaptation's alone. With
    `tail` (training text, never `ids`), lr and decay are first tuned on it (`tune`, which
    reports to `on_result`): its winner reads `ids`, or, where no candidate beat static on
    the tail, nothing does and the dynamic figure is the static one. Returns {"static":
    (loss sum, count), "dynamic": (loss sum, count), "settings": those used (None: none
    won), "tuning": Tuning or None}. The model's weights are the trained ones afterwards."""
    static = evaluate(model, ids, batch_size=1, seq_len=settings.seq_len)
    rms = gradient_rms(model, train_ids, settings.seq_len)
    tuning = None if tail is None else tune(model, tail, rms, settings.seq_len, on_result=on_result)
    if tuning is not None:
        settings = tuning.chosen
    dynamic = static if settings is None else dynamic_evaluate(model, ids, rms, settings)
    return {"static": static, "dynamic": dynamic, "settings": settings, "tuning": tuning}


def adapt_stream(stream, ids: torch.Tensor, rms: list[torch.Tensor], settings: DynamicSettings) -> None:
    """Adapt a GenerationStream's model to `ids` by dynamic evaluation (its weights stay
    adapted; `rms`: gradient_rms of the training text) and leave the stream where the text
    ends, for every one of its samples."""
    reader = DynamicEvaluation(stream.model, rms, settings)
    _, state, logits = reader.read(ids)
    stream.continue_from(state, logits)
