"""`charrnn generate --interactive` in a real pseudo-terminal (tmux), where input() gets
line editing, Enter sends a line and Ctrl-D ends the loop. Skipped without tmux."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charrnn.storage.load import load_model
from charrnn.generation.sample import generate
from charrnn.training.train import TrainConfig, train

torch.set_num_threads(1)

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux for a pseudo-terminal")
ROOT = Path(__file__).resolve().parents[1]


def prompts(pane: str) -> int:
    """How many prompt lines the pane shows (tmux trims the space after '>')."""
    return sum(line.startswith(">") for line in pane.splitlines())


def wait_for(tmux, predicate, timeout=60.0) -> str:
    """The pane's text once predicate(text) holds; fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        pane = subprocess.run(tmux + ["capture-pane", "-p", "-t", "interactive"], capture_output=True,
                              text=True).stdout
        if predicate(pane):
            return pane
        if time.monotonic() > deadline:
            pytest.fail(f"the terminal never showed what was expected; it shows:\n{pane}")
        time.sleep(0.2)


def test_interactive_prompt_in_a_pseudo_terminal(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the time traveller said so and so it was the time of the traveller " * 60)
    train(TrainConfig(corpus=str(corpus), hidden=8, batch_size=4, seq_len=16, max_steps=10, eval_every=5,
                      out=str(tmp_path / "run")))
    command = " ".join(shlex.quote(part) for part in [
        "env", f"PYTHONPATH={ROOT}", "OMP_NUM_THREADS=1", sys.executable, "-m", "charrnn", "generate",
        "--checkpoint", str(tmp_path / "run"), "--interactive", "--greedy", "--length", "15"])
    # a tmux server of our own (its own socket), so no one else's sessions are touched
    tmux = ["tmux", "-L", f"charrnn-test-{os.getpid()}"]
    subprocess.run(tmux + ["new-session", "-d", "-s", "interactive", "-x", "120", "-y", "20",
                           f"{command}; echo exit=$?; sleep 60"], check=True)
    try:
        wait_for(tmux, lambda pane: "Ctrl-D ends" in pane and prompts(pane) == 1)
        subprocess.run(tmux + ["send-keys", "-t", "interactive", "the ", "Enter"], check=True)
        pane = wait_for(tmux, lambda pane: prompts(pane) == 2)
        lines = pane.splitlines()
        answered = lines.index("> the")
        model, vocab, _ = load_model(tmp_path / "run", "cpu")
        reply = "".join(c[0] for c in generate(model, vocab, "the ", 15, greedy=True))
        assert lines[answered + 1] == reply.rstrip()  # the continuation, on its own line
        subprocess.run(tmux + ["send-keys", "-t", "interactive", "Z", "Enter"], check=True)
        wait_for(tmux, lambda pane: "not in the model's vocabulary (1 occurrence): 'Z'" in pane and prompts(pane) == 3)
        subprocess.run(tmux + ["send-keys", "-t", "interactive", "C-d"], check=True)
        wait_for(tmux, lambda pane: "exit=0" in pane)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
