"""The model for the user's text and time: a new --max-time run sizes what it was not told.

Over a budget of B seconds a model of P parameters that trains at S characters per second
reads C = S x B characters. Widen it and P grows faster than S falls: past some width the
run ends before the model has learned what it could hold. The rule measures S for the
widths of WIDTHS from FIRST_WIDTH towards the answer (trial steps of the real training
step, as the time plan takes them) and keeps the widest whose C is at least
CHARS_PER_PARAMETER x P; the rest follows:

    width       the widest that reads CHARS_PER_PARAMETER characters per parameter
                (FRESH_CHARS_PER_PARAMETER on a text the budget does not read once) in
                at least MIN_STEPS steps
    embedding   EMBEDDING wide, unless the vocabulary is no larger (one-hot then)
    layers      1;  batch  BATCH sequences of SEQ_LEN (LONG_SEQ_LEN from LONG_SEQ_WIDTH)
    lr          LR_AT_256 x (256 / width) ** LR_POWER: Adam's steps shrink as the matrices grow
    dropout     DROPOUT_PER_DOUBLING per doubling of the passes over the text (C / its
                length) beyond DROPOUT_FROM, up to MAX_DROPOUT: a text read many times over
                is learned by heart unless the model is kept from it
    epochs      MAX_PASSES when the budget would read the text more often (0 otherwise):
                past them even MAX_DROPOUT does not keep a small text from being learned by
                heart, so the run ends early and C above counts only those passes

The two CHARS_PER_PARAMETER, MIN_STEPS and MAX_PASSES were fitted on the grid of docs/presets.md (scripts/sizing_grid.py),
which varies the width; the learning rates follow the presets' (5e-3 at 256, 3e-3 at 512),
and the dropout rule and the batch were set before the grid, which did not vary them.
Options given on the command line win: the rule chooses only `config.auto_size`, and
with --hidden given it measures that width alone (for its dropout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch

from charrnn.config import TrainConfig
from charrnn.model import build_model, num_parameters
from charrnn.training.distributed import all_reduce, world_size
from charrnn.training.schedule import make_optimizer
from charrnn.training.train_step import TrainStep

WIDTHS = (128, 192, 256, 384, 512, 768, 1024)
FIRST_WIDTH = 256  # where the search starts: it measures the widths from here to the answer
CHARS_PER_PARAMETER, FRESH_CHARS_PER_PARAMETER = 4.0, 13.0
MIN_STEPS = 1000  # and at least this many steps: Adam needs its updates as much as the characters
EMBEDDING = 64
BATCH, SEQ_LEN, LONG_SEQ_LEN, LONG_SEQ_WIDTH = 32, 64, 128, 384
LR_AT_256, LR_POWER = 5e-3, 0.75
DROPOUT_FROM, DROPOUT_PER_DOUBLING, MAX_DROPOUT = 2.0, 0.1, 0.4
MAX_PASSES = 30
# each width's trial: WARMUP_STEPS untimed, then at least MIN_TIMED steps and MIN_SECONDS
WARMUP_STEPS, MIN_TIMED, MIN_SECONDS = 1, 2, 0.25


@dataclass
class Sizing:
    """What the rule chose (the settings it was left), why (one sentence), and what it
    measured: chars/s and parameters of each width it tried. Every checkpoint holds it."""

    chosen: dict
    reason: str
    measured: dict  # width -> [chars per second, parameters]
    seconds: float = 0.0  # what measuring took from the budget


def size_model(config: TrainConfig, vocab_size: int, train_chars: int, seconds: float,
               measure: Callable[[TrainConfig], tuple[float, int]]) -> Sizing:
    """The settings of `config.auto_size` for a run of `seconds` on `train_chars`
    characters; `measure(config)` gives a model's training speed (chars/s) and parameters."""
    free = set(config.auto_size)
    fixed = {"embedding": EMBEDDING if vocab_size > EMBEDDING else 0, "layers": 1, "batch_size": BATCH}
    trial = replace(config, **{k: v for k, v in fixed.items() if k in free}, auto_size=[])

    def at(width: int) -> TrainConfig:
        return replace(trial, hidden=width, seq_len=seq_len_for(width) if "seq_len" in free else trial.seq_len)

    measured: dict = {}
    max_passes = MAX_PASSES if "epochs" in free else (config.epochs or math.inf)

    def measured_at(width: int) -> list:  # [chars per second, parameters], measured once
        if width not in measured:
            measured[width] = list(measure(at(width)))
        return measured[width]

    def reads_at(width: int) -> float:  # the characters a run of this width reads: the budget's, up to max_passes
        return min(measured_at(width)[0] * seconds, max_passes * train_chars)

    def fits(width: int) -> bool:  # reads enough per parameter, in enough steps
        reads, parameters, candidate = reads_at(width), measured_at(width)[1], at(width)
        steps = reads / (candidate.batch_size * candidate.seq_len * world_size())
        return reads >= chars_per_parameter(reads / max(train_chars, 1)) * parameters and steps >= MIN_STEPS

    best = at(widest(fits) if "hidden" in free else config.hidden)
    (speed, parameters), reads = measured_at(best.hidden), reads_at(best.hidden)
    passes = reads / max(train_chars, 1)
    derived = {"lr": float(f"{LR_AT_256 * (256 / best.hidden) ** LR_POWER:.2g}"), "dropout": dropout_for(passes),
               "epochs": float(MAX_PASSES) if speed * seconds > reads else 0.0}
    chosen = {name: (derived[name] if name in derived else getattr(best, name)) for name in config.auto_size}
    how = ("the width given" if "hidden" not in free else "the widest to read" if fits(best.hidden)
           else "the narrowest: no width reads")
    capped = bool(chosen.get("epochs"))
    return Sizing(chosen, reason(replace(best, **chosen), speed, parameters, reads, passes, how, capped), measured)


def widest(fits: Callable[[int], bool]) -> int:
    """The widest of WIDTHS that fits (the narrowest when none does): from FIRST_WIDTH up
    while the next one does, or down until one does. A wider model reads fewer characters,
    in fewer steps, for more parameters, so the widths that fit are the narrow ones."""
    i = WIDTHS.index(FIRST_WIDTH)
    if fits(WIDTHS[i]):
        while i + 1 < len(WIDTHS) and fits(WIDTHS[i + 1]):
            i += 1
        return WIDTHS[i]
    i -= 1
    while i > 0 and not fits(WIDTHS[i]):
        i -= 1
    return WIDTHS[i]


def chars_per_parameter(passes: float) -> float:
    """What a width must read per parameter: CHARS_PER_PARAMETER when the budget reads the
    text at least once (repeated text, which dropout keeps from being learned by heart, gives
    a wider model more to learn from), FRESH_CHARS_PER_PARAMETER when it does not (every
    character new: more of them per parameter pays, as on the 20 MB corpus of the grid)."""
    return CHARS_PER_PARAMETER if passes >= 1 else FRESH_CHARS_PER_PARAMETER


def seq_len_for(width: int) -> int:
    return LONG_SEQ_LEN if width >= LONG_SEQ_WIDTH else SEQ_LEN


def dropout_for(passes: float) -> float:
    if passes <= DROPOUT_FROM:
        return 0.0
    return round(min(MAX_DROPOUT, DROPOUT_PER_DOUBLING * math.log2(passes / DROPOUT_FROM)), 2)


def reason(config: TrainConfig, speed: float, parameters: int, reads: float, passes: float, how: str,
           capped: bool) -> str:
    table = f" over a {config.embedding}-wide embedding" if config.embedding else ""
    layers = f"{config.layers}x" if config.layers > 1 else ""
    model = (f"{config.cell.upper()} {layers}{config.hidden}{table}, dropout {config.dropout:g}, lr {config.lr:g}, "
             f"batch {config.batch_size} x {config.seq_len}")
    steps = reads / (config.batch_size * config.seq_len * world_size())
    why = how if how == "the width given" else (
        f"{how} {chars_per_parameter(passes):g} characters per parameter in {MIN_STEPS:,} steps or more")
    return (f"sized for the text and the budget: {model}: {why} ({reads / 1e6:.3g}M characters in {steps:,.0f} "
            f"steps at {speed:,.0f} chars/s for {parameters:,} parameters, {reads / parameters:.3g} each; "
            f"{f'{passes:.2g}' if passes < 10 else f'{passes:,.0f}'} passes over the text"
            + (f", the most that pay: --epochs {config.epochs:g})" if capped else ")"))


def measure_speed(config: TrainConfig, vocab_size: int, train_ids: torch.Tensor, device: torch.device,
                  clock: Callable[[], float]) -> tuple[float, int]:
    """Characters per second of the training step (and optimizer step) of the model
    `config` makes, on a batch of the training text; and its parameters. Every process
    measures; all take the slowest's time. The random number generators are left as they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = build_model(config.model_config(vocab_size)).to(device)
        params = list(model.parameters())
        step, optimizer = TrainStep(model, params, config.clip), make_optimizer(config, params)
        rows, length = config.batch_size, config.seq_len
        ids = train_ids[: rows * length + 1].long().repeat(1 + rows * (length + 1) // max(len(train_ids), 1))
        X, Y = ids[: rows * length].view(rows, length), ids[1: rows * length + 1].view(rows, length)
        for _ in range(WARMUP_STEPS):
            step(X, Y, None, divisor=Y.numel())
            optimizer.step()
        timed, started = 0, clock()
        while True:
            step(X, Y, None, divisor=Y.numel())
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timed += 1
            took = all_reduce([clock() - started], "max")[0]
            if timed >= MIN_TIMED and took >= MIN_SECONDS:
                return rows * length * timed / took, num_parameters(model)
