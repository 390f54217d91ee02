"""A plain install, as a new user makes it: a fresh virtual environment with torch and
`pip install -e .` (no extras, so no matplotlib and nothing it pulls in). train, generate,
eval and a two-process torchrun must work there without a traceback or a warning.

It builds that environment (a minute or two), so it runs only where CI is set (CI sets
CI=true) or CHARRNN_PLAIN_INSTALL=1; elsewhere it skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_text

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "8", "--batch-size", "2", "--seq-len", "8", "--max-steps", "4", "--eval-every", "2",
        "--device", "cpu"]

pytestmark = pytest.mark.skipif(
    not (os.environ.get("CI") or os.environ.get("CHARRNN_PLAIN_INSTALL")),
    reason="builds a virtual environment (a minute or two): set CI or CHARRNN_PLAIN_INSTALL=1 to run it")


def run(*command, cwd: Path) -> subprocess.CompletedProcess:
    # nothing of this checkout's environment leaks in (PYTHONPATH, a warnings filter)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """The bin directory of a fresh venv holding torch (the version running these tests)
    and this checkout installed without extras; the working directory is its parent."""
    home = tmp_path_factory.mktemp("plain")
    subprocess.run([sys.executable, "-m", "venv", home / "venv"], check=True)
    pip = home / "venv" / "bin" / "pip"
    torch_version = torch.__version__.split("+")[0]  # 2.13.0+cpu -> 2.13.0
    for what in ([f"torch=={torch_version}"], ["-e", ROOT]):
        installed = run(pip, "install", "-q", *what, cwd=home)
        assert installed.returncode == 0, installed.stderr
    (home / "corpus.txt").write_text(make_text(2000))
    return home / "venv" / "bin"


def assert_clean(result: subprocess.CompletedProcess, allowed_stderr: str = "") -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip() == allowed_stderr, result.stderr


def test_the_core_commands_run_without_a_warning(plain):
    home = plain.parent.parent
    trained = run(plain / "charrnn", "train", "corpus.txt", *TINY, "--out", "run", cwd=home)
    # the one line a plain install may print: how to get the curve, with a command that
    # installs matplotlib (not the unrelated `charrnn` of the package index)
    assert_clean(trained, "curve.png skipped: matplotlib is not installed (pip install matplotlib)")
    assert "done: 4 steps" in trained.stdout
    assert_clean(run(plain / "charrnn", "generate", "--checkpoint", "run", "--length", "20", cwd=home))
    assert_clean(run(plain / "charrnn", "eval", "--checkpoint", "run", cwd=home))


def test_two_torchrun_processes_train_without_a_warning(plain):
    home = plain.parent.parent
    result = run(plain / "torchrun", "--standalone", "--nproc_per_node=2", "-m", "charrnn", "train", "corpus.txt",
                 *TINY, "--out", "ddp", "-q", cwd=home)
    assert_clean(result)
    assert "done: 4 steps" in result.stdout
    assert (home / "ddp" / "last.pt").is_file()
