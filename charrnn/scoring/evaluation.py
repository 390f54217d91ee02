"""Static evaluation: the summed cross-entropy of a text under a model, in one layout that
training and `charrnn eval` share, so that "validation loss" means one number.

The text is cut into contiguous streams evaluated side by side. Only the first stream
starts from a zero state, as the text does; every other stream is first warmed up (not
scored) on the WARM_UP characters before it, so the figure hardly depends on how many
streams the text is cut into. Every character after the first is scored once: the few
that do not fill a whole row are scored by the last stream, which runs on into them.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from charrnn.model import map_state

# Characters a stream reads before its first scored one. A character model's state forgets
# its start within a few hundred characters: measured on a small model of tinyshakespeare,
# 8 and 64 streams then agree to ~1e-4 nats per character (tests/test_evaluation.py).
WARM_UP = 256


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode (no dropout) inside; the mode it was in restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.inference_mode()
def evaluate(model, ids: torch.Tensor, *, batch_size: int, seq_len: int, carry_state: bool = True,
             device=None, shard: tuple[int, int] = (0, 1)) -> tuple[float, int]:
    """Summed cross-entropy (nats) and number of predicted characters over `ids`.

    With carry_state the text is cut into at most `batch_size` contiguous streams, run
    `seq_len` characters per forward call, each warmed up on the text before it (see the
    module's docstring); otherwise every stride-1 window of seq_len + 1 characters from a
    zero state, as the book evaluates. With `shard` = (i, n), only every n-th stream or
    window from the i-th: n processes share the work and add up their results."""
    device = device or model.W_hq.device
    with eval_mode(model):
        if carry_state:
            total, count = _streams(model, ids, batch_size, seq_len, device, shard)
        else:
            total, count = _windows(model, ids, batch_size, seq_len, device, shard)
    return total.item(), count


def _streams(model, ids, batch_size, seq_len, device, shard):
    streams = max(1, min(batch_size, (len(ids) - 1) // max(seq_len, 1)))
    length = (len(ids) - 1) // streams
    my_streams = torch.arange(streams)[shard[0] :: shard[1]]
    inputs = ids[: streams * length].view(streams, length)[my_streams].to(device)
    targets = ids[1 : streams * length + 1].view(streams, length)[my_streams].to(device)
    state = _warm_up(model, ids, my_streams * length, min(WARM_UP, length), device)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for start in range(0, length, seq_len):
        total, count, state = _score(model, inputs[:, start : start + seq_len], targets[:, start : start + seq_len],
                                     state, total, count)
    tail = len(ids) - 1 - streams * length  # fewer characters than streams: the last stream runs on
    if tail and len(my_streams) and my_streams[-1] == streams - 1:
        last = map_state(lambda t: t[-1:], state)
        rest = ids[streams * length :].to(device)
        for start in range(0, tail, seq_len):
            total, count, last = _score(model, rest[None, start : min(start + seq_len, tail)],
                                        rest[None, start + 1 : start + seq_len + 1], last, total, count)
    return total, count


def _warm_up(model, ids, starts: torch.Tensor, width: int, device):
    """The states of streams that start at `starts`: each run over the `width` characters
    before its start; a stream starting at 0 gets the zero state, as the text does."""
    if width == 0:
        return None
    offsets = torch.arange(-width, 0)
    context = ids[starts.clamp(min=width)[:, None] + offsets].to(device).long()  # stream 0's: any, reset below
    _, state = model(context, None)
    at_text_start = (starts == 0).to(device)
    return map_state(lambda t: t.masked_fill(at_text_start[:, None], 0), state)


def _score(model, X, Y, state, total, count):
    logits, state = model(X.long(), state)
    total += F.cross_entropy(logits.flatten(0, 1), Y.long().flatten(), reduction="sum")
    return total, count + Y.numel(), state


def _windows(model, ids, batch_size, seq_len, device, shard):
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    windows = ids.unfold(0, seq_len + 1, 1)[shard[0] :: shard[1]]
    for start in range(0, len(windows), batch_size):
        rows = windows[start : start + batch_size].to(device).long()
        total, count, _ = _score(model, rows[:, :-1], rows[:, 1:], None, total, count)
    return total, count


def recorded_layout(ckpt: dict) -> dict:
    """How training evaluated the checkpoint's model: {"batch_size", "seq_len",
    "carry_state"}. Checkpoints from before the layout was recorded: their run's settings
    (the global batch, the sequence length, windows for --sampling random or the book's
    split); with no settings at all, 16 streams of 256 characters."""
    layout = ckpt.get("evaluation")
    if isinstance(layout, dict) and {"batch_size", "seq_len", "carry_state"} <= layout.keys():
        return layout
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    corpus = ckpt.get("corpus") if isinstance(ckpt.get("corpus"), dict) else {}
    processes = (ckpt.get("progress") or {}).get("world_size", 1)
    if "batch_size" not in config or "seq_len" not in config:
        return {"batch_size": 16, "seq_len": 256, "carry_state": True}
    windows = "windows" in corpus or config.get("sampling") == "random"
    return {"batch_size": config["batch_size"] * processes, "seq_len": config["seq_len"], "carry_state": not windows}


def nats_summary(loss: float) -> dict:
    """A mean loss in nats per character as the figures users compare."""
    return {"perplexity": math.exp(min(loss, 709)), "bits_per_char": loss / math.log(2), "loss": loss}
