"""Where a training run stands (Progress): what every checkpoint records so that a resumed
run continues exactly, and what the schedule and the time plan read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from charrnn.training import budget
from charrnn.training.distributed import world_size


@dataclass
class Progress:
    """Where a run stands. Every checkpoint holds it (as a dict), so that a resumed run
    continues its counters, its place in the data, --patience, the plateau schedule and
    the --max-time plan with its revisions exactly."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # the next batch of the epoch
    chars_seen: int = 0
    elapsed: float = 0.0  # seconds of training, over every session of the run
    best_val_loss: float = math.inf
    last_val_loss: float = math.inf
    evals_since_best: int = 0  # --patience and the plateau schedule count these ...
    lr_scale: float = 1.0  # ... and the plateau schedule lowers this (charrnn.training.schedule)
    world_size: int = 1  # the processes that trained it
    planned_steps: int | None = None  # --max-time's plan: the steps that fit ...
    planned_for: float | None = None  # ... in this many seconds
    speed: budget.Speed | None = None  # what the plan's revisions measure
    # [step, total]: every change of the run's step total, at the step before which it
    # came (the plan a resumed run and --replay follow) ...
    totals: list = field(default_factory=list)
    anchor: list = field(default_factory=lambda: [0, 0.0])  # ... the cosine's (step, progress) at the last
    script: list | None = None  # a replay's: the totals it follows instead of the clock

    @classmethod
    def from_checkpoint(cls, saved: dict) -> Progress:
        """A checkpoint's progress (an older one's lacks the later fields: their defaults),
        now trained by this run's processes."""
        known = {f.name for f in fields(cls)} - {"world_size"}
        values = {name: value for name, value in saved.items() if name in known}
        if values.get("speed") is not None:
            values["speed"] = budget.Speed(**values["speed"])
        return cls(**values, world_size=world_size())
