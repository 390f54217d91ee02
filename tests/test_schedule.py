"""How fast a run learns: the learning rate at each step (warm-up, constant, cosine,
plateau), and the optimizers with their weight decay, checked on one real step of
`charrnn train`. (The cosine over a --max-time plan is in test_budget.py.)"""

from __future__ import annotations

import pytest
import torch

import charrnn.training.run as run_module
from charrnn.storage.checkpoint import load_checkpoint
from charrnn.config import TrainConfig
from charrnn.training.progress import Progress
from charrnn.training.schedule import after_evaluation, lr_at

from conftest import TINY

# ---------------------------------------------------------------- the learning rate


def test_warm_up_then_constant_or_cosine_down_to_min_lr_fraction():
    config = TrainConfig(lr=0.1, warmup_steps=4, lr_schedule="constant")
    assert lr_at(config, 0.0, 0) == pytest.approx(0.025)
    assert lr_at(config, 0.0, 3) == pytest.approx(0.1)
    assert lr_at(config, 0.9, 10) == pytest.approx(0.1)
    cosine = TrainConfig(lr=0.1, lr_schedule="cosine", min_lr_fraction=0.1)
    assert lr_at(cosine, 0.0, 0) == pytest.approx(0.1)
    assert lr_at(cosine, 0.5, 50) == pytest.approx(0.055)
    assert lr_at(cosine, 1.0, 100) == pytest.approx(0.01)


def test_plateau_multiplies_the_scale_every_plateau_patience_evaluations_without_a_best():
    config = TrainConfig(lr_schedule="plateau", plateau_factor=0.5, plateau_patience=2)
    progress = Progress()
    scales = []
    for val_loss in [3.0, 2.0, 2.5, 2.1, 2.2, 2.3, 1.9, 2.0, 2.0]:
        after_evaluation(config, progress, val_loss)
        scales.append(progress.lr_scale)
    assert scales == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    assert progress.best_val_loss == 1.9 and progress.evals_since_best == 2
    assert lr_at(config, 0.5, 100, progress.lr_scale) == config.lr * 0.125
    warming = TrainConfig(lr_schedule="plateau", warmup_steps=10)
    assert lr_at(warming, 0.0, 4, 0.5) == warming.lr * 5 / 10


def test_other_schedules_ignore_the_plateau_scale():
    for schedule in ("constant", "cosine"):
        config = TrainConfig(lr_schedule=schedule)
        progress = Progress(best_val_loss=1.0)
        for _ in range(5):
            after_evaluation(config, progress, 2.0)
        assert progress.lr_scale == 1.0 and progress.evals_since_best == 5
        assert lr_at(config, 0.0, 50, progress.lr_scale) == config.lr


# ---------------------------------------------------------------- optimizers and weight decay


@pytest.fixture
def first_step(cli, corpus_file, tmp_path, monkeypatch):
    """`first_step(*options)`: the weights before and after the first step of
    `charrnn train OPTIONS` (the same start every time: the same seed)."""
    real_build = run_module.build_model
    runs = []

    def train_one_step(*options):
        start = {}

        def build(config):
            model = real_build(config)
            start.update({name: t.detach().clone() for name, t in model.state_dict().items()})
            return model

        monkeypatch.setattr(run_module, "build_model", build)
        out = tmp_path / f"run-{len(runs)}"
        runs.append(out)
        cli("train", corpus_file, *TINY, "--max-steps", "1", "--out", out, *options).assert_ok()
        return start, load_checkpoint(out / "last.pt")["model"]

    return train_one_step


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_shrinks_every_weight_by_lr_times_decay_beside_the_gradient_step(first_step, optimizer):
    # AdamW decays the weights apart from the Adam step (decoupled); plain SGD's L2 term
    # does the same: w - lr * step(g) - lr * decay * w, against w - lr * step(g) without it
    lr, decay = 0.01, 0.1
    start, plain = first_step("--optimizer", optimizer, "--lr", str(lr), "--weight-decay", "0")
    same_start, decayed = first_step("--optimizer", optimizer, "--lr", str(lr), "--weight-decay", str(decay))
    for name, weights in start.items():
        assert torch.equal(weights, same_start[name])
        assert not torch.equal(decayed[name], plain[name]) or not weights.any(), name
        torch.testing.assert_close(decayed[name] - plain[name], -lr * decay * weights, rtol=1e-3, atol=1e-6)


def test_adam_puts_weight_decay_into_the_gradient_not_beside_it(first_step):
    # Adam's L2 term goes through the moments and is normalised with the gradient: it moves
    # the weights, but not by AdamW's lr * decay * w
    lr, decay = 0.01, 5.0
    start, plain = first_step("--optimizer", "adam", "--lr", str(lr))
    _, decayed = first_step("--optimizer", "adam", "--lr", str(lr), "--weight-decay", str(decay))
    change = {name: decayed[name] - plain[name] for name in start}
    assert any(change[name].abs().max() > 0 for name in start)
    assert not all(torch.allclose(change[name], -lr * decay * start[name], rtol=1e-3, atol=1e-6) for name in start)
