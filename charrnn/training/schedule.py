"""How fast and how long a run trains: the optimizer, the learning rate at each step
(warm-up, then constant, cosine or plateau), and the step count its limits allow."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from charrnn.config import TrainConfig
from charrnn.errors import CharrnnError

if TYPE_CHECKING:
    from charrnn.training.progress import Progress


def make_optimizer(config: TrainConfig, params):
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_at(config: TrainConfig, progress: float, step: int, plateau_scale: float = 1.0) -> float:
    """The learning rate at a point of the run: linear warm-up, then constant, cosine decay
    over the run's progress (0..1 of its step or time budget), or plateau: lr times
    `plateau_scale`, which `after_evaluation` lowers when validation stops improving."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        low = config.lr * config.min_lr_fraction
        return low + (config.lr - low) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if config.lr_schedule == "plateau":
        return config.lr * plateau_scale
    return config.lr


def plan_progress(step: int, total: int, anchor: tuple[int, float]) -> float:
    """How far through its plan a run is at `step` (0..1), for the cosine. A run whose
    total never changes is at step / total. When a revision changes the total at step a,
    the run is at p there (`anchor` (a, p)) and the rest, 1 - p, is spread evenly over the
    steps to the new total: the learning rate bends but never jumps, and reaches its end
    at the last step."""
    anchor_step, anchor_progress = anchor
    if total <= anchor_step:
        return 1.0
    return anchor_progress + (1 - anchor_progress) * (step - anchor_step) / (total - anchor_step)


def change_total(progress: Progress, step: int, total: int) -> None:
    """The run's step total becomes `total` before `step`: recorded in `progress.totals`
    (what a resumed run and `--replay` follow), the cosine's anchor moved to `step`. Two
    changes at one step keep the last."""
    if progress.totals and progress.totals[-1][1] == total:
        return
    if progress.totals:
        progress.anchor = [step, plan_progress(step, progress.totals[-1][1], tuple(progress.anchor))]
        if progress.totals[-1][0] == step:
            progress.totals.pop()
    progress.totals.append([step, total])


def after_evaluation(config: TrainConfig, progress: Progress, val_loss: float) -> None:
    """Count evaluations without a new best validation loss; every `plateau_patience` of
    them the plateau schedule multiplies its scale by `plateau_factor`. The counters live in
    `progress`, which every checkpoint holds, so a resumed run continues them exactly."""
    if val_loss < progress.best_val_loss:
        progress.best_val_loss = val_loss
        progress.evals_since_best = 0
    else:
        progress.evals_since_best += 1
        if config.lr_schedule == "plateau" and progress.evals_since_best % config.plateau_patience == 0:
            progress.lr_scale *= config.plateau_factor


def step_limits(config: TrainConfig, batches_per_epoch: int) -> dict[str, int]:
    """The step counts that --max-steps and --epochs allow, by option (with no limit at all,
    10 epochs); --max-time's planned steps join them in train()."""
    epochs = config.epochs or (0 if (config.max_steps or config.max_time) else 10)
    limits = {"--max-steps": config.max_steps} if config.max_steps else {}
    if epochs:
        limits["--epochs"] = max(1, round(epochs * batches_per_epoch))
    return limits


def nothing_left(run: Path, step: int, limits: dict[str, int], config: TrainConfig) -> CharrnnError:
    """A resumed run whose budget is spent: which limits stop it, and which to raise."""
    spent = [option for option, steps in limits.items() if steps <= step]
    given = {"--max-steps": config.max_steps, "--epochs": f"{config.epochs or 10:g}", "--max-time": config.max_time}
    said = " and ".join(f"{option} {given[option]} ({limits[option]} steps)" if option != "--max-steps"
                        else f"{option} {given[option]}" for option in spent)
    allow = "allows" if len(spent) == 1 else "allow"
    return CharrnnError(f"nothing left to train: {run} has done {step} steps, all that {said} {allow}; "
                        f"resume with a larger {' and '.join(spent)} to train it further")
