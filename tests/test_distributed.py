"""Data-parallel training under torchrun, with two CPU processes (gloo on this machine).

Two processes with --batch-size B must train exactly the model one process trains with
--batch-size 2B (the same streams, the gradients averaged before clipping), stay identical
to each other, stop at the same step when only one of them gets SIGTERM, and write
checkpoints that resume on any number of processes.

The torchrun workers run this file as a script (see the bottom): `charrnn train ARGS`,
then each writes its parameters, step count, exit code and CPU generator state to
OUT/rank<R>.pt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--cell", "lstm", "--hidden", "8", "--seq-len", "8", "--clip", "0.05", "--device", "cpu", "-q"]

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def torchrun(out: Path, args: list[str], nproc: int = 2) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=NPROC charrnn train ARGS`, through the worker
    below. Its workers start sessions of their own: stop_workers() ends them."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         __file__, str(out), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=out)


def finish(process: subprocess.Popen, out: Path, timeout: float = 60) -> tuple[str, list[dict]]:
    """Wait for a torchrun; its stderr and every worker's dump."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
        stop_workers(out)
    dumps = sorted(out.glob("rank*.pt"))
    assert dumps, stderr
    return stderr, [torch.load(path, weights_only=True) for path in dumps]


def stop_workers(out: Path) -> None:
    for pid_file in out.glob("rank*.pid"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def train_here(*args: str) -> None:
    """`charrnn train ARGS` in this process (no process group)."""
    from typer.testing import CliRunner

    from charrnn.cli.main import app

    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output


def checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def assert_same_model(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=atol, msg=name)


@pytest.fixture
def corpus(tmp_path) -> Path:
    words = "the time machine traveller said and of a to was it".split()
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(words[(i * 7 + i // 3) % len(words)] for i in range(600)))
    return path


def test_two_processes_train_the_model_one_process_trains_with_their_global_batch(tmp_path, corpus):
    # a constant rate: the resumed runs below change --max-steps, which a cosine follows
    args = [str(corpus), *TINY, "--lr-schedule", "constant", "--eval-every", "3", "--max-steps", "4"]
    run = torchrun(tmp_path / "two", [*args, "--batch-size", "2", "--out", str(tmp_path / "two")])
    train_here(*args, "--batch-size", "4", "--out", str(tmp_path / "one"))
    stderr, ranks = finish(run, tmp_path / "two")

    assert [r["exit_code"] for r in ranks] == [0, 0], stderr
    assert_same_model(ranks[1]["model"], ranks[0]["model"], atol=0)
    two, one = checkpoint(tmp_path / "two" / "last.pt"), checkpoint(tmp_path / "one" / "last.pt")
    assert_same_model(two["model"], ranks[0]["model"], atol=0)  # rank 0's, without DDP's "module."
    assert_same_model(two["model"], one["model"])
    assert two["state"][0][0].shape == one["state"][0][0].shape == (4, 8)  # every stream's state
    torch.testing.assert_close(two["state"], one["state"], rtol=0, atol=1e-5)
    assert two["progress"]["chars_seen"] == one["progress"]["chars_seen"] == 4 * 4 * 8
    assert two["progress"]["world_size"] == 2
    # the validation loss, computed in shares and added up, is the single process's
    assert two["progress"]["best_val_loss"] == pytest.approx(one["progress"]["best_val_loss"], abs=1e-6)

    # a two-process run resumes in one process that keeps its global batch of 4 streams,
    # exactly as if it had never stopped
    train_here("--resume", str(tmp_path / "two"), "--max-steps", "8", "--batch-size", "4")
    train_here(*args[:-1], "8", "--batch-size", "4", "--out", str(tmp_path / "one8"))
    assert_same_model(checkpoint(tmp_path / "two" / "last.pt")["model"],
                      checkpoint(tmp_path / "one8" / "last.pt")["model"])


def test_random_windows_resume_from_one_process_on_two_with_short_last_batches(tmp_path):
    """d2l windows: 9 windows make batches of 4, 4 and 1, so in the last one rank 1 has no
    rows at all, and the mean is still over the global batch."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefgh ijk abcd" + "efgh ijk abcdefgh")  # 17 characters to train on: 9 windows
    args = [str(corpus), *TINY, "--sampling", "random", "--val-fraction", "0.5", "--eval-every", "2",
            "--lr-schedule", "constant"]
    train_here(*args, "--batch-size", "4", "--max-steps", "2", "--out", str(tmp_path / "two"))
    run = torchrun(tmp_path / "two", ["--resume", str(tmp_path / "two"), "--batch-size", "2", "--max-steps", "7"])
    train_here(*args, "--batch-size", "4", "--max-steps", "7", "--out", str(tmp_path / "one"))
    stderr, ranks = finish(run, tmp_path / "two")

    assert [r["exit_code"] for r in ranks] == [0, 0], stderr
    assert_same_model(ranks[1]["model"], ranks[0]["model"], atol=0)
    two, one = checkpoint(tmp_path / "two" / "last.pt"), checkpoint(tmp_path / "one" / "last.pt")
    assert two["progress"]["epoch"] == one["progress"]["epoch"] == 2
    assert_same_model(two["model"], one["model"])


def test_every_process_draws_its_own_dropout_masks_and_resumes_them_exactly(tmp_path, corpus):
    # (a constant rate: the split run's first part has another --max-steps, which a cosine follows)
    args = [str(corpus), *TINY, "--dropout", "0.5", "--batch-size", "2", "--eval-every", "2", "--lr-schedule", "constant"]
    straight, split = tmp_path / "straight", tmp_path / "split"

    def run(out: Path, *more: str) -> list[dict]:
        stderr, ranks = finish(torchrun(out, [*more]), out, timeout=180)
        assert [r["exit_code"] for r in ranks] == [0, 0], stderr
        return ranks

    ranks = run(straight, *args, "--max-steps", "4", "--out", str(straight))
    # one stream for both would have made the same draws and left the same state
    assert not torch.equal(ranks[0]["rng"], ranks[1]["rng"])
    run(split, *args, "--max-steps", "2", "--out", str(split))
    run(split, "--resume", str(split), "--max-steps", "4")
    assert checkpoint(split / "last.pt")["progress"]["step"] == 4
    assert_same_model(checkpoint(split / "last.pt")["model"], checkpoint(straight / "last.pt")["model"], atol=0)


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, corpus):
    out = tmp_path / "run"
    run = torchrun(out, [str(corpus), *TINY, "--batch-size", "2", "--eval-every", "5", "--max-steps", "100000",
                         "--out", str(out)])
    deadline = time.monotonic() + 90
    while not ((out / "last.pt").exists() and (out / "rank1.pid").exists()):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1]
        time.sleep(0.1)
    os.kill(int((out / "rank1.pid").read_text()), signal.SIGTERM)
    stderr, ranks = finish(run, out, timeout=60)

    assert [r["exit_code"] for r in ranks] == [130, 130], stderr
    assert ranks[0]["steps"] == ranks[1]["steps"]
    assert_same_model(ranks[1]["model"], ranks[0]["model"], atol=0)
    assert checkpoint(out / "last.pt")["progress"]["step"] == ranks[0]["steps"]
    assert stderr.count(f"stopped by SIGTERM at step {ranks[0]['steps']}") == 1  # rank 0's words only
    assert f"torchrun --nproc_per_node=2 -m charrnn train --resume {out}" in stderr  # how to go on, as it ran


def test_every_process_follows_rank_zeros_revisions_of_the_time_plan_and_a_replay_repeats_them(tmp_path, corpus):
    timed, replay = tmp_path / "timed", tmp_path / "replay"
    args = [str(corpus), *TINY, "--batch-size", "2", "--eval-every", "5", "--dropout", "0.3"]
    stderr, ranks = finish(torchrun(timed, [*args, "--max-time", "3s", "--out", str(timed)]), timed, timeout=120)
    assert [r["exit_code"] for r in ranks] == [0, 0], stderr
    progress = checkpoint(timed / "last.pt")["progress"]
    assert ranks[0]["steps"] == ranks[1]["steps"] == progress["step"] == progress["totals"][-1][1]
    assert_same_model(ranks[1]["model"], ranks[0]["model"], atol=0)
    stderr, ranks = finish(torchrun(replay, ["--replay", str(timed), "--out", str(replay)]), replay, timeout=120)
    assert [r["exit_code"] for r in ranks] == [0, 0], stderr
    assert_same_model(checkpoint(replay / "last.pt")["model"], checkpoint(timed / "last.pt")["model"], atol=0)


def test_shares_of_an_evaluation_add_up_to_the_whole():
    from charrnn.model import ModelConfig, build_model
    from charrnn.scoring.evaluation import evaluate

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=5, cell="gru", hidden=8))
    ids = torch.randint(0, 5, (203,))
    for carry_state in (True, False):
        kwargs = dict(batch_size=5, seq_len=7, carry_state=carry_state)
        whole = evaluate(model, ids, **kwargs)
        shares = [evaluate(model, ids, shard=(i, 3), **kwargs) for i in range(3)]
        assert sum(count for _, count in shares) == whole[1]
        assert sum(loss for loss, _ in shares) == pytest.approx(whole[0], rel=1e-6)  # float32 sums per batch


def test_resume_with_another_global_batch_starts_the_streams_afresh(tmp_path, corpus):
    from typer.testing import CliRunner

    from charrnn.cli.main import app

    train_here(str(corpus), *TINY, "--batch-size", "4", "--max-steps", "10", "--out", str(tmp_path / "run"))
    before = checkpoint(tmp_path / "run" / "last.pt")["progress"]
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "run"), "--batch-size", "2",
                                      "--max-steps", "11"])
    assert result.exit_code == 0, result.output
    assert "the global batch is now 2 sequences (--batch-size 2 x 1 process), not 4" in result.output
    after = checkpoint(tmp_path / "run" / "last.pt")
    # 4 streams make 89 batches an epoch, 2 streams 179: batch 10 of 89 is batch 20 of 179
    assert (before["index"], after["progress"]["index"]) == (10, 20 + 1)
    assert after["state"][0][0].shape == (2, 8)


def worker(out: Path, args: list[str]) -> None:
    """One torchrun process: `charrnn train ARGS`, then its parameters, step count, exit
    code and CPU generator state into OUT/rank<RANK>.pt."""
    import charrnn.training.run
    import charrnn.training.train
    from charrnn.cli.main import app

    rank = os.environ["RANK"]
    (out / f"rank{rank}.pid").write_text(str(os.getpid()))
    models, summaries = [], []
    build_model, train = charrnn.training.run.build_model, charrnn.training.train.train
    charrnn.training.run.build_model = lambda *a: models.append(build_model(*a)) or models[-1]
    charrnn.training.train.train = lambda *a, **k: summaries.append(train(*a, **k)) or summaries[-1]
    try:
        app(["train", *args], prog_name="charrnn")
        code = 0
    except SystemExit as e:
        code = e.code or 0
    torch.save({"model": models[-1].state_dict(), "steps": summaries[-1]["steps"], "exit_code": code,
                "rng": torch.get_rng_state()}, out / f"rank{rank}.pt.partial")
    (out / f"rank{rank}.pt.partial").rename(out / f"rank{rank}.pt")  # whole, or not there
    (out / f"rank{rank}.pid").unlink()
    # torchrun stops the other workers when one exits with an error code: wait for their dumps
    deadline = time.monotonic() + 30
    while len(list(out.glob("rank*.pt"))) < int(os.environ["WORLD_SIZE"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(code)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2:])
