"""A --max-time budget, turned into a number of steps and revised as the run goes.

A run stopped by the clock alone would stop at a step that depends on how busy the
machine was, and a learning-rate schedule that followed the clock would change with it.
So a run with --max-time trains towards a planned number of steps: before its first step
it measures how long a training step and an evaluation take and plans the steps that
fit in the budget with their evaluations; then, every REVISE_FRACTION of the budget and
after every evaluation, it measures again over the steps since the last revision and
plans the steps that fit in what is left. A machine that slows down or speeds up mid-run
moves the planned end, and the run still ends on its budget.

Every change of the run's step total is recorded (`Progress.totals`, in every
checkpoint), so a resumed run replays the changes made before it stopped, and
`--replay RUN` repeats a run bit for bit by following its recorded totals instead of the
clock. The learning rate follows the total without jumps (charrnn.training.schedule).
"""

from __future__ import annotations

import math
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
# The plan is revised after every evaluation and every REVISE_FRACTION of the budget
# (but not more often than every MIN_REVISE seconds, nor less often than every
# MAX_REVISE): a speed change right after the last revision costs at most about that
# fraction of the budget times the change.
REVISE_FRACTION = 0.01
MIN_REVISE = 0.5
MAX_REVISE = 30.0
# A revision's window counts as PRIOR_STEPS more steps at the last estimate: a window of
# one or two steps on a machine whose speed jitters moves the estimate only part of the way.
PRIOR_STEPS = 2


@dataclass
class Plan:
    steps: int  # the new steps that fit
    step_seconds: float
    eval_seconds: float
    measuring_seconds: float  # what the measurement itself took from the budget


@dataclass
class Speed:
    """What the plan knows of the machine: the seconds of a step and of an evaluation
    (with its checkpoints) and the step's seconds when that evaluation ran (a machine
    that slows its steps slows its evaluations alike), and the window since the last
    revision that the next one measures. Every checkpoint holds it (as a dict), so a resumed run revises as the
    run would have revised had it never stopped."""

    step_seconds: float
    eval_seconds: float
    since: float  # the run's elapsed seconds at the last revision ...
    since_step: int  # ... its step then ...
    eval_since: float = 0.0  # ... and the seconds spent evaluating since
    eval_step_seconds: float = 0.0  # the step's seconds around the last evaluation (0: unknown)


def evaluation_count(step: int, steps: int, eval_every: int) -> int:
    """The evaluations that `steps` more steps from `step` bring: one at every multiple of
    eval_every, and one at the end unless the last step had one."""
    end = step + steps
    return end // eval_every - step // eval_every + (end % eval_every != 0)


def steps_that_fit(seconds: float, step_seconds: float, eval_seconds: float, eval_every: int, step: int = 0) -> int:
    """The most steps from `step` that fit in `seconds` with their evaluations."""

    def cost(n: int) -> float:
        return n * step_seconds + evaluation_count(step, n, eval_every) * eval_seconds

    if cost(0) > seconds:
        return 0
    low, high = 0, max(1, math.ceil(seconds / max(step_seconds, 1e-12)))  # cost(high) > seconds
    while high - low > 1:  # cost grows with n: cost(low) fits, cost(high) does not
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= seconds else (low, middle)
    return low


def revision_interval(budget: float) -> float:
    return min(MAX_REVISE, max(MIN_REVISE, REVISE_FRACTION * budget))


def revision_due(speed: Speed, step: int, elapsed: float, budget: float, eval_every: int) -> bool:
    """Whether to revise before `step`: an evaluation came since the last revision, or the
    revision interval has passed (on every process alike: the step and the agreed clock)."""
    if step == speed.since_step:
        return False  # nothing new to measure
    evaluated = step // eval_every > speed.since_step // eval_every
    return evaluated or elapsed - speed.since >= revision_interval(budget)


def revise(speed: Speed, step: int, elapsed: float, budget: float, eval_every: int) -> int:
    """The step the budget now reaches: the steps since the last revision give the step's
    seconds (the evaluations among them apart; PRIOR_STEPS), and the steps that fit in what is left
    follow, the last evaluation's seconds scaled as the step's have changed since. The
    window starts again here."""
    steps = step - speed.since_step
    if steps > 0:
        took = max(elapsed - speed.since - speed.eval_since, 0.0)
        speed.step_seconds = (took + PRIOR_STEPS * speed.step_seconds) / (steps + PRIOR_STEPS)
    if speed.eval_since > 0:  # an evaluation among these steps ran at their speed
        speed.eval_step_seconds = speed.step_seconds
    speed.since, speed.since_step, speed.eval_since = elapsed, step, 0.0
    eval_seconds = speed.eval_seconds
    if speed.eval_step_seconds > 0:  # as much slower or faster as the step has become since
        eval_seconds *= speed.step_seconds / speed.eval_step_seconds
    return step + steps_that_fit(budget - elapsed, speed.step_seconds, eval_seconds, eval_every, step)


def evaluated(speed: Speed, seconds: float) -> None:
    """An evaluation (with its checkpoints) took `seconds`."""
    speed.eval_seconds = seconds
    speed.eval_since += seconds


def plan(seconds: float, eval_every: int, trial_step: Callable[[int], None], evaluation: Callable[[], None],
         params: list[torch.Tensor], device: torch.device, clock: Callable[[], float], step: int = 0) -> Plan:
    """Measure `trial_step(i)` (a training step with an optimizer of its own) and
    `evaluation()`, then plan the steps from `step` that fit in what is left of `seconds`. The
    weights and the random number generators are left as they were, so the trial steps
    change nothing the run computes. Under torchrun every process takes the same number
    of trial steps and all agree on the slowest one's times (so on the plan)."""
    started = clock()
    weights = [p.detach().clone() for p in params]
    min_seconds = min(MAX_MEASURE, MEASURE_FRACTION * seconds)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(WARMUP_STEPS):
            trial_step(i)
        sync(device)
        timed, since = 0, clock()
        while True:
            trial_step(WARMUP_STEPS + timed)
            sync(device)
            timed += 1
            took = all_reduce([clock() - since], "max")[0]
            if timed >= MIN_TIMED and took >= min_seconds:
                break
    with torch.no_grad():
        for p, saved in zip(params, weights):
            p.copy_(saved)
    since = clock()
    evaluation()
    eval_seconds = all_reduce([clock() - since], "max")[0]
    measuring = all_reduce([clock() - started], "max")[0]
    step_seconds = took / timed
    return Plan(steps_that_fit(seconds - measuring, step_seconds, eval_seconds, eval_every, step),
                step_seconds, eval_seconds, measuring)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
