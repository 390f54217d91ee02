"""A --max-time budget, turned once into a number of steps.

A run stopped by the clock stops at a step that depends on how busy the machine was, and
a learning-rate schedule that follows the clock changes with it: the same seed would not
repeat. So before its first step a run with --max-time measures how long a training step
and an evaluation take, and plans the number of steps that fit in the budget with their
evaluations. From then on it is a run of that many steps: the schedule follows step /
steps, the checkpoint records the plan, `--resume` keeps it, and `--max-steps N` (the
planned N) repeats the run exactly. A machine that slows down mid-run makes it end later
than the budget, never at another step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from charrnn.training.distributed import all_reduce

# The step is timed after WARMUP_STEPS untimed steps (first allocations; a CUDA graph's
# warm-up and capture), for at least MIN_TIMED steps and MEASURE_FRACTION of the budget,
# but never longer than MAX_MEASURE seconds.
WARMUP_STEPS = 5
MIN_TIMED = 3
MEASURE_FRACTION = 0.01
MAX_MEASURE = 10.0


@dataclass
class Plan:
    steps: int  # the new steps that fit
    step_seconds: float
    eval_seconds: float
    measuring_seconds: float  # what the measurement itself took from the budget


def steps_that_fit(seconds: float, step_seconds: float, eval_seconds: float, eval_every: int) -> int:
    """How many steps fit in `seconds` with their evaluations: one after every eval_every
    steps and one at the end. (n steps take n * step + (n / eval_every + 1) * eval.)"""
    return max(0, math.floor((seconds - eval_seconds) / (step_seconds + eval_seconds / eval_every)))


def plan(seconds: float, eval_every: int, trial_step: Callable[[int], None], evaluation: Callable[[], None],
         params: list[torch.Tensor], device: torch.device) -> Plan:
    """Measure `trial_step(i)` (a training step with an optimizer of its own) and
    `evaluation()`, then plan the steps that fit in what is left of `seconds`. The
    weights and the random number generators are left as they were, so the trial steps
    change nothing the run computes. Under torchrun every process takes the same number
    of trial steps and all agree on the slowest one's times (so on the plan)."""
    started = time.perf_counter()
    weights = [p.detach().clone() for p in params]
    min_seconds = min(MAX_MEASURE, MEASURE_FRACTION * seconds)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(WARMUP_STEPS):
            trial_step(i)
        sync(device)
        timed, since = 0, time.perf_counter()
        while True:
            trial_step(WARMUP_STEPS + timed)
            sync(device)
            timed += 1
            took = all_reduce([time.perf_counter() - since], "max")[0]
            if timed >= MIN_TIMED and took >= min_seconds:
                break
    with torch.no_grad():
        for p, saved in zip(params, weights):
            p.copy_(saved)
    since = time.perf_counter()
    evaluation()
    eval_seconds = all_reduce([time.perf_counter() - since], "max")[0]
    measuring = all_reduce([time.perf_counter() - started], "max")[0]
    step_seconds = took / timed
    return Plan(steps_that_fit(seconds - measuring, step_seconds, eval_seconds, eval_every),
                step_seconds, eval_seconds, measuring)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
